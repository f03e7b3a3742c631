"""Shard folders behind a URL: ``https://``, ``http://``, or any scheme fsspec opens (``s3://``, ``gs://``, … with
its filesystem package installed).

Design (docs/data.md §7): nothing is downloaded whole. The manifest is fetched once; each sample's members are read
with **ranged reads** (``[offset, size]`` from the manifest, as local folders are read with ``pread``), and a
micro-batch's members are fetched **concurrently** (a small thread pool per loader worker), so latency overlaps
instead of adding up. Selection, grouping plan, DDP split and mid-epoch resume are the manifest's, the same as for a
local folder. What still fails after retries is a :class:`RemoteReadError` — at load time a counted skip
(``unreadable_shard``), or the run's error with ``on_error: raise`` — until too many shards are dead: then
:class:`RemoteUnavailableError` stops the run. Never a hang, never an unbounded download.

Settings, class attributes of :class:`RemoteReader` (set them on the class, e.g. in a launcher script):

- ``attempts`` (4) tries per read, ``backoff`` (0.2 s) the first wait between tries, doubled after each;
- ``timeout`` (30 s) the **deadline of one ranged request**: connect, TLS handshake, headers and body together (every
  socket receive waits only for what is left of it, so a server that drips a byte at a time is cut off like one
  that never answers); ``file_timeout`` (600 s) the same for whole files (the manifest);
- ``max_file`` (2 GiB) the most a whole-file read takes (the manifest; ``report.json`` takes at most
  ``max_report``, 64 MiB); a ranged read never takes more than its size (one byte more marks a server that sends
  too much);
- ``max_redirects`` (3) redirects followed, each only to the same origin (scheme, host, port);
- ``threads`` (8) concurrent reads of a micro-batch;
- ``dead_after`` (2) failed reads (each after its attempts) after which a shard is **dead**: its further members
  fail at once, without a request (counted skips), until the reader closes at the end of the epoch;
- ``min_dead`` (2), ``max_dead_fraction`` (0.1): once at least ``min_dead`` shards are dead and they are more than
  ``max_dead_fraction`` of the shards this reader has read, every read raises :class:`RemoteUnavailableError`,
  which is not a counted skip: the run stops with the dead shards, the last failure and what to do. An epoch so
  loses at most about ``dead shards × dead_after × attempts × timeout`` to a dead or stalled server (reads of a
  micro-batch run concurrently), not ``timeout`` per member for ever.

A wrong answer that retrying cannot mend is a :class:`PermanentReadError` at once, without retries: a byte range
other than the one asked for (``Content-Range``, ``Content-Length``), more bytes than asked or allowed, a status
200 to a range request (the server ignores ranges), a redirect to another origin, a client error (4xx but 408/429).
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urljoin, urlsplit

URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
REDIRECTS = (301, 302, 303, 307, 308)
PORTS = {"http": 80, "https": 443}


class RemoteReadError(OSError):
    """A read that failed (after its retries): at load time a counted skip, ``unreadable_shard``."""


class PermanentReadError(RemoteReadError):
    """The server answered, wrongly, in a way retrying cannot mend: failed at once, without retries."""


class RemoteUnavailableError(RuntimeError):
    """Too many shards are dead: the run stops (never a counted skip) with the shards, the failure and what to do."""


def is_url(path) -> bool:
    return isinstance(path, str) and bool(URL_RE.match(path))


def join(root, name: str) -> str:
    """``root/name`` for a URL or a local folder (a URL keeps its ``//``)."""
    return f"{str(root).rstrip('/')}/{name}"


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or PORTS.get(scheme)


def left(deadline: float) -> float:
    """Seconds left before ``deadline`` (``time.monotonic``); :class:`TimeoutError` when none are."""
    rest = deadline - time.monotonic()
    if rest <= 0:
        raise TimeoutError("the request's deadline passed")
    return rest


class _Deadline:
    """A socket whose every receive waits only for what is left of the request's ``deadline``. http.client reads a
    header line, or a body, with as many receives as the server sends pieces: a timeout per receive alone lets a
    server that drips a byte at a time hold a request open for ever. (A TLS read or handshake is bounded by the
    socket's timeout as a whole, in CPython's ``_ssl``.)"""

    deadline = math.inf

    def recv_into(self, *args):
        self.settimeout(left(self.deadline))
        return super().recv_into(*args)


class _Socket(_Deadline, socket.socket):
    pass


class _TLSSocket(_Deadline, ssl.SSLSocket):
    pass


class RemoteReader:
    """Ranged reads with retries, deadlines and caps; dead shards and the stop (see the module docstring for the
    settings). ``stats`` counts requests, retries and failed reads; ``dead`` maps a dead shard's URL to its last
    failure."""

    attempts, timeout, backoff, threads = 4, 30.0, 0.2, 8
    file_timeout, max_file, max_report, max_redirects = 600.0, 2 << 30, 64 << 20, 3
    dead_after, min_dead, max_dead_fraction = 2, 2, 0.1

    def __init__(self):
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._pool: ThreadPoolExecutor | None = None
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._forget()

    def _forget(self) -> None:
        self.seen: set[str] = set()
        self.failed: Counter = Counter()
        self.dead: dict[str, str] = {}
        self.stop: str | None = None

    def read(self, url: str, offset: int | None = None, size: int | None = None, limit: int | None = None) -> bytes:
        """The bytes ``[offset, offset + size)`` of ``url``, or the whole file (at most ``limit`` bytes, default
        ``max_file``) without a range."""
        ranged = offset is not None
        if ranged:
            self._admit(url)
            if not (isinstance(offset, int) and isinstance(size, int) and offset >= 0 and size >= 0):
                raise PermanentReadError(f"{url}: [{offset}, {size}] is not a byte range")
            if size == 0:
                return b""
        last: Exception | None = None
        for attempt in range(self.attempts):
            self.stats["requests"] += 1
            try:
                if url.startswith(("http://", "https://")):
                    return self._http(url, offset, size, limit or self.max_file)
                return self._fsspec(url, offset, size, limit or self.max_file)
            except PermanentReadError as e:
                last = e
                break
            except Exception as e:  # any transport error (HTTP status, deadline, reset, a filesystem package's own)
                last = e
                if attempt + 1 < self.attempts:
                    self.stats["retries"] += 1
                    time.sleep(self.backoff * 2 ** attempt)
        self.stats["failures"] += 1
        permanent, why = isinstance(last, PermanentReadError), str(last).removeprefix(f"{url}: ")
        if not permanent:
            why = f"{self.attempts} attempts failed, the last with {why}"
        if ranged:
            self._failed(url, why)
        raise (PermanentReadError if permanent else RemoteReadError)(f"{url}: {why}")

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[bytes | RemoteReadError]:
        """Several ranged reads at once (a micro-batch's members); a failed one is returned as its error (a stop,
        :class:`RemoteUnavailableError`, is raised)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)

        def one(req):
            try:
                return self.read(*req)
            except RemoteReadError as e:
                return e
        return list(self._pool.map(one, requests))

    def close(self) -> None:
        """Ends the pool and forgets dead shards (an epoch's end: a shard that is back is read again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        with self._lock:
            self._forget()

    # dead shards and the stop

    def _admit(self, url: str) -> None:
        with self._lock:
            if self.stop is not None:
                raise RemoteUnavailableError(self.stop)
            self.seen.add(url)
            if url in self.dead:
                raise RemoteReadError(f"{url}: not read, the shard is dead after {self.failed[url]} failed reads "
                                      f"(the last: {self.dead[url]})")

    def _failed(self, url: str, why: str) -> None:
        """Count a failed read of shard ``url`` (``why``: the failure); raise the stop when too many are dead."""
        with self._lock:
            self.failed[url] += 1
            if self.failed[url] >= self.dead_after:
                self.dead.setdefault(url, why)
            n = len(self.dead)
            if self.stop is None and n >= self.min_dead and n > self.max_dead_fraction * len(self.seen):
                names = ", ".join(list(self.dead)[:5]) + (f" and {n - 5} more" if n > 5 else "")
                self.stop = (
                    f"stopping: {n} of the {len(self.seen)} remote shards read so far are dead, more than "
                    f"{self.max_dead_fraction:.0%} (RemoteReader.max_dead_fraction; at least min_dead={self.min_dead})"
                    f" — each failed {self.dead_after} reads of {self.attempts} attempts with a "
                    f"{self.timeout:g} s deadline. Dead: {names}. The last failure: {url}: {why}. Check that the server "
                    f"answers and holds these shards, then resume from the last checkpoint (docs/data.md §7); "
                    f"skipping their samples would silently train on a fraction of the data.")
            stop = self.stop
        if stop is not None:
            raise RemoteUnavailableError(stop)

    # transports

    def _http(self, url: str, offset: int | None, size: int | None, limit: int) -> bytes:
        timeout = self.timeout if offset is not None else self.file_timeout
        deadline, start = time.monotonic() + timeout, url
        try:
            for _ in range(self.max_redirects + 1):
                location, data = self._get(url, offset, size, limit, deadline)
                if location is None:
                    return data
                target = urljoin(url, location)
                if origin(target) != origin(url):
                    raise PermanentReadError(f"{start}: redirected to {target}, another origin: not followed")
                url = target
        except TimeoutError:
            raise RemoteReadError(f"{start}: no complete answer within the {timeout:g} s deadline of a "
                                  f"request") from None
        except ssl.SSLCertVerificationError as e:  # a configuration to fix (the CA, the host name), not a glitch
            raise PermanentReadError(f"{start}: {e}") from None
        raise PermanentReadError(f"{start}: more than {self.max_redirects} redirects (the last to {url})")

    def _connect(self, url: str, deadline: float) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        host, port, https = parts.hostname, origin(url)[2], parts.scheme.lower() == "https"
        raw = socket.create_connection((host, port), left(deadline))
        sock = _Socket(raw.family, raw.type, raw.proto, raw.detach())
        try:
            sock.settimeout(left(deadline))  # the TLS handshake's bound
            if https:
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                    self._tls.sslsocket_class = _TLSSocket
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        sock.deadline = deadline
        conn = http.client.HTTPSConnection(host, port, context=self._tls) if https else \
            http.client.HTTPConnection(host, port)
        conn.sock = sock  # connected: http.client sends on it
        return conn

    def _get(self, url: str, offset: int | None, size: int | None, limit: int, deadline: float):
        """One request: ``(redirect location or None, body)``, the answer checked."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Connection": "close"}
        if offset is not None:
            headers["Range"] = f"bytes={offset}-{offset + size - 1}"
        conn, resp = self._connect(url, deadline), None
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            status = resp.status
            if status in REDIRECTS and resp.getheader("Location"):
                return resp.getheader("Location"), b""
            if status >= 300:
                error = PermanentReadError if 400 <= status < 500 and status not in (408, 425, 429) else RemoteReadError
                raise error(f"{url}: HTTP {status} {resp.reason}")
            if offset is None:
                want = limit
                if status != 200:
                    raise PermanentReadError(f"{url}: status {status} to a request for the whole file")
                if resp.length is not None and resp.length > limit:
                    raise PermanentReadError(f"{url}: {resp.length} bytes, larger than the {limit}-byte cap of a "
                                             f"whole-file read")
            else:
                want = size
                self._check_range(url, resp, offset, size)
            data = self._body(resp, want + 1)
            if len(data) > want:
                if offset is None:
                    raise PermanentReadError(f"{url}: larger than the {limit}-byte cap of a whole-file read")
                raise PermanentReadError(f"{url}: the server sent more than the {size} bytes asked for at offset "
                                         f"{offset}")
            if offset is not None and len(data) < size:
                raise RemoteReadError(f"{url}: {len(data)} of {size} bytes at offset {offset}")
            return None, data
        finally:
            if resp is not None:
                resp.close()
            conn.close()

    @staticmethod
    def _check_range(url: str, resp, offset: int, size: int) -> None:
        if resp.status != 206:
            raise PermanentReadError(f"{url}: the server ignored the byte range (status {resp.status})")
        got = CONTENT_RANGE.fullmatch((resp.getheader("Content-Range") or "").strip())
        end = offset + size - 1
        if got is None or (int(got[1]), int(got[2])) != (offset, end) or (got[3] != "*" and end >= int(got[3])):
            raise PermanentReadError(f"{url}: asked for bytes {offset}-{end}, the server answered Content-Range "
                                     f"{resp.getheader('Content-Range')!r}")
        if resp.length is not None and resp.length != size:
            raise PermanentReadError(f"{url}: asked for {size} bytes at offset {offset}, the server announced "
                                     f"Content-Length {resp.length}")

    @staticmethod
    def _body(resp, most: int) -> bytes:
        """At most ``most`` bytes of the body, in pieces (each receive bounded by the deadline)."""
        chunks, n = [], 0
        while n < most:
            chunk = resp.read1(min(most - n, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
        return b"".join(chunks)

    def _fsspec(self, url: str, offset: int | None, size: int | None, limit: int) -> bytes:
        """A read through fsspec, in a daemon thread waited for until the deadline (a hung call is abandoned: a
        filesystem package's own calls cannot be interrupted, and a daemon thread never holds up the exit)."""
        try:
            import fsspec
        except ImportError:
            raise PermanentReadError(f"{url}: reading this scheme needs fsspec and its filesystem package") from None
        timeout = self.timeout if offset is not None else self.file_timeout
        box: dict = {}

        def call():
            try:
                fs, path = fsspec.core.url_to_fs(url)
                if offset is not None:
                    box["data"] = fs.cat_file(path, start=offset, end=offset + size)
                elif (fs.size(path) or 0) > limit:
                    box["error"] = PermanentReadError(f"{url}: larger than the {limit}-byte cap of a whole-file read")
                else:
                    box["data"] = fs.cat_file(path)
            except Exception as e:  # handed to the reader's retries
                box["error"] = e

        worker = threading.Thread(target=call, daemon=True, name="lmm-fsspec-read")
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise RemoteReadError(f"{url}: no answer within the {timeout:g} s deadline of a request")
        if "error" in box:
            raise box["error"]
        data = box["data"]
        if offset is not None and len(data) != size:
            raise PermanentReadError(f"{url}: {len(data)} of {size} bytes at offset {offset}")
        if offset is None and len(data) > limit:
            raise PermanentReadError(f"{url}: larger than the {limit}-byte cap of a whole-file read")
        return data
