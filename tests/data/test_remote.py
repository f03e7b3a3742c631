"""Shards behind a URL (lmm.data.remote), served by real HTTP servers started here on 127.0.0.1 (byte ranges, and
failure injection: flaky, dead, stalled, drip-feeding, oversized, lying, redirecting): the same batches as the local
folder, mid-epoch resume, retries, one deadline per request, a size cap, Content-Range checked, redirects kept to
the origin, dead shards skipped without traffic and an epoch that stops once too many are dead — never a hang."""

import shutil
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from lmm.data.manifest import MANIFEST_NAME, Manifest
from lmm.data.records import RecordError
from lmm.data.remote import PermanentReadError, RemoteReader, RemoteReadError, RemoteUnavailableError

from .test_shard_reads import within


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` (206), ``/moved/x`` redirected to ``/x``, ``/loop/x`` to itself, and
    failures injected from the server's ``policy`` into the requests of the shards in ``server.bad`` (all if None)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.count += 1
            server.hits[self.path] += 1
            n = server.count
        if self.path.startswith(("/moved/", "/loop/")):
            return self.redirect(self.path.removeprefix("/moved") if self.path.startswith("/moved/") else self.path)
        name = self.path.rsplit("/", 1)[-1]
        hit = name.endswith(".tar") and (server.bad is None or name in server.bad)
        policy = server.policy if hit or server.policy in ("flaky", "oversize") else "ok"
        if (policy == "flaky" and n % 3 == 0) or policy == "dead":
            return self.send_error(503, "injected failure")
        if policy == "stall":  # accepts the connection, never answers
            server.release.wait(10)
            return
        if policy == "redirect":
            return self.redirect(server.target + self.path)
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        with open(path, "rb") as f:
            whole = f.read()
        if policy == "oversize":  # a 206 (or a 200) that never ends, without a Content-Length
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", rng.replace("=", " ") + "/*")
            self.end_headers()
            return self.drip(b"x" * (4 << 20), 1 << 16, 0)
        if not rng or policy == "norange":
            self.send_response(200)
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            return self.drip(whole, len(whole) or 1, 0)
        start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        if policy == "lying":  # claims (and sends) another range of the right length
            start, end = 0, end - start
        data = whole[start:end + 1]
        head = (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(data)}\r\n"
                f"Content-Range: bytes {start}-{end}/{len(whole)}\r\n\r\n").encode()
        if policy == "drip_headers":
            return self.drip(head + data, 1, 0.02)
        self.wfile.write(head)
        self.drip(data, 1 if policy == "drip_body" else len(data) or 1, 0.02 if policy == "drip_body" else 0)

    def redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def drip(self, data, step, pause):
        try:
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                if pause and self.server.release.wait(pause):
                    return
        except OSError:  # the client gave up
            pass


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # a micro-batch's concurrent connections never wait on a full listen backlog


@pytest.fixture
def serve(monkeypatch):
    """``serve(folder)`` → ``(server, url)``: a real HTTP server on 127.0.0.1, shut down after the test."""
    monkeypatch.setattr(RemoteReader, "backoff", 0.01)
    started = []

    def start(folder):
        httpd = Server(("127.0.0.1", 0), partial(RangeHandler, directory=str(folder)))
        httpd.policy, httpd.bad, httpd.count, httpd.hits = "ok", None, 0, Counter()
        httpd.lock, httpd.release, httpd.target = threading.Lock(), threading.Event(), ""
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        started.append(httpd)
        return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in started:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(serve, shard_dir):
    return serve(shard_dir)


@pytest.fixture
def short(monkeypatch):
    """Small settings, so that a failure mode shows its bound in a fraction of a second."""
    for name, value in {"timeout": 0.4, "attempts": 2, "backoff": 0.01}.items():
        monkeypatch.setattr(RemoteReader, name, value)
    return RemoteReader.timeout


def epoch(dm, limit=None):
    dm.setup("fit")
    return [(b.ids, b.input_ids, b.pixel_values) for b in islice(dm.train_dataloader(), limit)]


def a_member(shard_dir, ext="json"):
    m = Manifest.load(shard_dir)
    i = next(i for i in range(len(m)) if ext in m.members[i])
    offset, size = m.members[i][ext]
    return m.shards[i], offset, size, (shard_dir / m.shards[i]).read_bytes()[offset:offset + size]


@pytest.mark.parametrize("workers", [0, 2])
def test_remote_shards_give_the_local_batches(make_dm, server, workers):
    httpd, url = server
    local, remote = epoch(make_dm(num_workers=workers), 16), epoch(make_dm(num_workers=workers, shards=url), 16)
    assert len(remote) == len(local) == 16
    for (ids_l, tok_l, pix_l), (ids_r, tok_r, pix_r) in zip(local, remote):
        assert ids_l == ids_r and torch.equal(tok_l, tok_r)
        assert (pix_l is None and pix_r is None) or torch.equal(pix_l, pix_r)
    assert httpd.count > len(remote)  # the manifest once, then ranged reads of the members


def test_remote_resume_mid_epoch_and_a_flaky_server(make_dm, server):
    httpd, url = server
    full = [ids for ids, _, _ in epoch(make_dm(shards=url), 15)]
    httpd.policy = "flaky"  # every third request fails; retries carry the run through
    first = make_dm(shards=url)
    assert [ids for ids, _, _ in epoch(first, 7)] == full[:7]
    state = first.state_dict()
    second = make_dm(shards=url)
    second.load_state_dict(state)
    second.setup("fit")
    assert [b.ids for b in islice(second.train_dataloader(), 8)] == full[7:15]
    stats = second.dataset.reader.remote.stats  # workers=0: the reader ran in this process
    assert stats["retries"] > 0 and stats["failures"] == 0


@pytest.mark.parametrize("policy", ["stall", "drip_headers", "drip_body"])
def test_a_request_has_one_deadline_for_connect_headers_and_body(server, shard_dir, short, policy):
    """A server that drips a byte every 20 ms answers every socket read in time: only a deadline on the whole
    request (connect, headers, body) ends it. Each attempt takes the deadline, no more."""
    httpd, url = server
    httpd.policy = policy
    name, offset, size, _ = a_member(shard_dir, "png")
    assert size * 0.02 > 4 * short  # dripped whole, the member would take far longer than the deadline
    reader, t0 = RemoteReader(), time.monotonic()
    with pytest.raises(RemoteReadError, match=r"2 attempts failed.*deadline"):
        within(10, reader.read, f"{url}/{name}", offset, size)
    took = time.monotonic() - t0
    assert 2 * short <= took < 2 * short + 1.0, took
    assert reader.stats == {"requests": 2, "retries": 1, "failures": 1}


@pytest.mark.parametrize("policy, error", [("oversize", "more than the 1048576 bytes"), ("lying", "Content-Range"),
                                           ("norange", "ignored the byte range")])
def test_a_wrong_answer_to_a_range_fails_at_once_without_retries(server, shard_dir, short, policy, error):
    httpd, url = server
    httpd.policy = policy
    name, offset, size, _ = a_member(shard_dir)
    if policy == "oversize":
        offset, size = 0, 1 << 20
    reader, t0 = RemoteReader(), time.monotonic()
    with pytest.raises(PermanentReadError, match=error):
        within(10, reader.read, f"{url}/{name}", offset + 1, size)
    assert time.monotonic() - t0 < 1.0 and reader.stats["requests"] == 1 == httpd.count


def test_whole_file_reads_are_capped(server, short, monkeypatch):
    httpd, url = server
    monkeypatch.setattr(RemoteReader, "max_file", 1000)
    for policy in ("ok", "oversize"):  # with a Content-Length (refused unread), and without one (cut at the cap)
        httpd.policy, httpd.count = policy, 0
        reader = RemoteReader()
        with pytest.raises(PermanentReadError, match="larger than the 1000-byte cap"):
            within(10, reader.read, f"{url}/{MANIFEST_NAME}")
        assert reader.stats["requests"] == 1 == httpd.count
    with pytest.raises(PermanentReadError, match="larger than the 1000-byte cap"):
        Manifest.load(url)


def test_redirects_stay_on_the_origin(serve, server, shard_dir, short):
    httpd, url = server
    name, offset, size, data = a_member(shard_dir)
    reader = RemoteReader()
    assert reader.read(f"{url}/moved/{name}", offset, size) == data  # same origin: followed
    other, other_url = serve(shard_dir)
    other.policy, other.target = "redirect", url  # another port: another origin, though the same bytes
    with pytest.raises(PermanentReadError, match="another origin") as err:
        reader.read(f"{other_url}/{name}", offset, size)
    assert f"{other_url}/{name}" in str(err.value) and f"{url}/{name}" in str(err.value)
    assert httpd.hits[f"/{name}"] == 1  # only the same-origin read reached it
    with pytest.raises(PermanentReadError, match="more than 3 redirects"):
        reader.read(f"{url}/loop/{name}", offset, size)
    assert httpd.hits[f"/loop/{name}"] == 4


def test_dead_shards_are_counted_skips_without_traffic_then_the_epoch_stops(make_dm, server, shard_dir, short,
                                                                            processor, tiny_tokenizer):
    from lmm.data.datamodule import build_datamodule

    httpd, url = server
    httpd.policy, httpd.bad = "dead", {"shard-000003.tar"}  # one dead shard: its samples are counted skips
    dm = make_dm(shards=url)
    dm.setup("fit")
    m = dm.manifest
    lost = sum(m.shards[i] == "shard-000003.tar" for mb in dm.rank_rows(0) for i in mb)
    batches = within(60, lambda: list(dm.train_dataloader()))
    assert sum((b.skipped for b in batches), Counter()) == Counter(unreadable_shard=lost) and lost > 8
    members = sum(len(m.members[i]) for mb in dm.rank_rows(0) for i in mb if m.shards[i] == "shard-000003.tar")
    requests = sum(n for path, n in httpd.hits.items() if path.endswith("shard-000003.tar"))
    # dead after 2 failed reads: only the reads already in flight then (a micro-batch's) still went out
    assert requests <= RemoteReader.attempts * 8 < RemoteReader.attempts * members, (requests, members)
    c = dm.counts()
    assert c["data/planned"] == c["data/trained"] + c["data/skipped"] and c["data/skipped"] == lost

    cfg = {"num_workers": 0, "on_error": "raise", "finetune": {"shards": url}}
    strict = build_datamodule(cfg, "finetune", processor, 4, 1, tiny_tokenizer.pad_token_id, 0)
    strict.setup("fit")
    with pytest.raises(RecordError, match="unreadable_shard"):
        within(30, lambda: list(strict.train_dataloader()))

    httpd.bad = None  # every shard dead: not an epoch of skips, a stop naming the shards and what to do
    with pytest.raises(RemoteUnavailableError, match=r"(?s)dead.*shard-0000.*503.*resume") as err:
        within(30, lambda: list(make_dm(shards=url).train_dataloader()))
    assert "more than 10%" in str(err.value)
    with pytest.raises(RemoteReadError, match="2 attempts failed"):
        RemoteReader().read(f"{url}/shard-000000.tar", 0, 10)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stalled_server_stops_the_epoch_within_its_bound(make_dm, server, short, workers):
    """Before: a server that accepts and never answers cost the timeout per member, every member, for ever. Now the
    epoch loses at most about ``min_dead × dead_after`` failed reads (concurrent within a micro-batch), each
    ``attempts × timeout``, then stops."""
    httpd, url = server
    dm = make_dm(shards=url, num_workers=workers)
    dm.setup("fit")
    httpd.policy = "stall"
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match="dead") as err:
        within(30, lambda: list(dm.train_dataloader()))
    took = time.monotonic() - t0
    per_read = RemoteReader.attempts * short + RemoteReader.backoff
    assert took < RemoteReader.min_dead * RemoteReader.dead_after * per_read + (4 if workers else 1), took
    assert "deadline" in str(err.value) and url in str(err.value)


def test_a_remote_manifest_must_be_utf8_and_name_shards_inside_the_folder(serve, shard_dir, tmp_path):
    folder = tmp_path / "served"
    shutil.copytree(shard_dir, folder)
    lines = (folder / MANIFEST_NAME).read_bytes().split(b"\n")
    (folder / MANIFEST_NAME).write_bytes(b"\n".join([lines[0], lines[1].replace(b'"id":"', b'"id":"\xff'), *lines[2:]]))
    _, url = serve(folder)
    with pytest.raises(ValueError, match=rf"{url}/manifest.jsonl line 2: not UTF-8") as err:
        Manifest.load(url)
    assert not isinstance(err.value, UnicodeDecodeError)
    (folder / MANIFEST_NAME).write_bytes(b"\n".join([lines[0].replace(b'"shard-000000.tar"', b'"../x.tar"'),
                                                     *lines[1:]]))
    with pytest.raises(ValueError, match=r"row 1\b.*'../x.tar'"):
        Manifest.load(url)


def self_signed(folder):
    """A certificate for 127.0.0.1 and its key (``cryptography``, a dependency of mlflow), as PEM files."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_https_reads_verify_the_certificate_and_keep_the_deadline(server, shard_dir, short, tmp_path, monkeypatch):
    import ssl

    httpd, url = server
    cert, key = self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    url = url.replace("http://", "https://")
    name, offset, size, data = a_member(shard_dir, "png")
    reader = RemoteReader()
    with pytest.raises(PermanentReadError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted: refused, not retried
        reader.read(f"{url}/{name}", offset, size)
    assert reader.stats["requests"] == 1
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted, as a private CA would be
    reader = RemoteReader()
    assert reader.read(f"{url}/{name}", offset, size) == data
    httpd.policy = "drip_body"
    t0 = time.monotonic()
    with pytest.raises(RemoteReadError, match="deadline"):
        within(10, reader.read, f"{url}/{name}", offset, size)
    assert 2 * short <= time.monotonic() - t0 < 2 * short + 1.0


class StalledFS(MemoryFileSystem):
    """An fsspec store that never answers a read (as a hung object store would)."""

    protocol = "stalledfs"
    release = threading.Event()

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.release.wait(10)
        return super().cat_file(path, start, end, **kwargs)


def test_fsspec_reads_check_the_length_and_keep_the_deadline(shard_dir, short):
    fs = fsspec.filesystem("memory")
    name, offset, size, data = a_member(shard_dir)
    fs.pipe(f"/lmm-test/{name}", (shard_dir / name).read_bytes())
    total = len((shard_dir / name).read_bytes())
    try:
        reader = RemoteReader()
        assert reader.read(f"memory://lmm-test/{name}", offset, size) == data
        with pytest.raises(PermanentReadError, match=f"{size // 2} of {size} bytes"):
            reader.read(f"memory://lmm-test/{name}", total - size // 2, size)
        fsspec.register_implementation("stalledfs", StalledFS, clobber=True)
        t0 = time.monotonic()
        with pytest.raises(RemoteReadError, match="deadline"):
            within(10, reader.read, f"stalledfs://lmm-test/{name}", offset, size)
        assert time.monotonic() - t0 < 2 * short + 1.0
    finally:
        StalledFS.release.set()
        fs.rm(f"/lmm-test/{name}")
