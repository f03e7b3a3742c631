"""Shard folders behind a URL: ``https://``, ``http://``, or any scheme fsspec opens (``s3://``, ``gs://``, … with
its filesystem package installed).

Design (docs/data.md §7): nothing is downloaded whole. The manifest is fetched once; each sample's members are read
with **ranged reads** (``[offset, size]`` from the manifest, as local folders are read with ``pread``), and a
micro-batch's members are fetched **concurrently** (a small thread pool per loader worker), so latency overlaps
instead of adding up. Selection, grouping plan, DDP split and mid-epoch resume are the manifest's, the same as for a
local folder. A failed request is retried with backoff (``attempts``, ``timeout`` per request); what still fails is
a :class:`RemoteReadError` — at load time a counted skip (``unreadable_shard``), or the run's error with
``on_error: raise``. Never a hang: every request has a timeout.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class RemoteReadError(OSError):
    pass


def is_url(path) -> bool:
    return isinstance(path, str) and bool(URL_RE.match(path))


def join(root, name: str) -> str:
    """``root/name`` for a URL or a local folder (a URL keeps its ``//``)."""
    return f"{str(root).rstrip('/')}/{name}"


class RemoteReader:
    """Ranged reads with retries; ``stats`` counts requests, retries and failures. Settings (class attributes):
    attempts per request, seconds per request, first backoff in seconds, concurrent reads."""

    attempts, timeout, backoff, threads = 4, 30.0, 0.2, 8

    def __init__(self):
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._pool: ThreadPoolExecutor | None = None

    def read(self, url: str, offset: int | None = None, size: int | None = None) -> bytes:
        """The bytes ``[offset, offset + size)`` of ``url`` (the whole file without a range)."""
        last = None
        for attempt in range(self.attempts):
            self.stats["requests"] += 1
            try:
                data = self._http(url, offset, size) if url.startswith(("http://", "https://")) else \
                    self._fsspec(url, offset, size)
                if size is not None and len(data) != size:
                    raise RemoteReadError(f"{url}: {len(data)} of {size} bytes at offset {offset}")
                return data
            except Exception as e:  # any transport error (HTTP status, timeout, reset, a filesystem package's own)
                last = e
                if attempt + 1 < self.attempts:
                    self.stats["retries"] += 1
                    time.sleep(self.backoff * 2 ** attempt)
        self.stats["failures"] += 1
        raise RemoteReadError(f"{url}: {self.attempts} attempts failed, the last with {last}")

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[bytes | RemoteReadError]:
        """Several ranged reads at once (a micro-batch's members); a failed one is returned as its error."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)

        def one(req):
            try:
                return self.read(*req)
            except RemoteReadError as e:
                return e
        return list(self._pool.map(one, requests))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _http(self, url: str, offset: int | None, size: int | None) -> bytes:
        req = urllib.request.Request(url)
        if offset is not None:
            req.add_header("Range", f"bytes={offset}-{offset + size - 1}")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            if offset is not None and resp.status != 206:
                raise RemoteReadError(f"{url}: the server ignored the byte range (status {resp.status})")
            return resp.read()

    @staticmethod
    def _fsspec(url: str, offset: int | None, size: int | None) -> bytes:
        try:
            import fsspec
        except ImportError:
            raise RemoteReadError(f"{url}: reading this scheme needs fsspec and its filesystem package") from None
        fs, path = fsspec.core.url_to_fs(url)
        if offset is None:
            return fs.cat_file(path)
        return fs.cat_file(path, start=offset, end=offset + size)
