"""Shards behind a URL (lmm.data.remote), served by a real HTTP server started here (byte ranges; a flaky mode that
fails requests; a dead mode): the same batches as the local folder, mid-epoch resume, retries, and a counted skip
or a clear error — never a hang."""

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice

import pytest
import torch

from lmm.data.records import RecordError
from lmm.data.remote import RemoteReader, RemoteReadError


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` (206), and failure injection from the server's ``policy``."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.count += 1
            n = server.count
        is_shard = self.path.endswith(".tar")
        if (server.policy == "flaky" and n % 3 == 0) or (server.policy == "dead" and is_shard):
            self.send_error(503, "injected failure")
            return
        rng = self.headers.get("Range")
        if not rng:
            return super().do_GET()
        path = self.translate_path(self.path)
        start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Range", f"bytes {start}-{end}/*")
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(shard_dir, monkeypatch):
    monkeypatch.setattr(RemoteReader, "backoff", 0.01)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(shard_dir)))
    httpd.policy, httpd.count, httpd.lock = "ok", 0, threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def epoch(dm, limit=None):
    dm.setup("fit")
    return [(b.ids, b.input_ids, b.pixel_values) for b in islice(dm.train_dataloader(), limit)]


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


def test_a_dead_server_is_a_counted_skip_or_a_clear_error(make_dm, server, processor, tiny_tokenizer, monkeypatch):
    from lmm.data.datamodule import build_datamodule

    httpd, url = server
    monkeypatch.setattr(RemoteReader, "attempts", 2)
    httpd.policy = "dead"  # the manifest is served, every shard request fails
    dm = make_dm(shards=url)
    dm.setup("fit")
    batches = list(islice(dm.train_dataloader(), 2))
    assert all(len(b) == 0 and b.skipped == {"unreadable_shard": 4} for b in batches)
    cfg = {"num_workers": 0, "on_error": "raise", "finetune": {"shards": url}}
    strict = build_datamodule(cfg, "finetune", processor, 4, 1, tiny_tokenizer.pad_token_id, 0)
    strict.setup("fit")
    with pytest.raises(RecordError, match="unreadable_shard"):
        next(iter(strict.train_dataloader()))
    with pytest.raises(RemoteReadError, match="2 attempts failed"):
        RemoteReader().read(f"{url}/shard-000000.tar", 0, 10)
