"""One manifest item → one training example: the sample's members read from its shard (a local file by ``pread``,
or a URL by byte range, a micro-batch's ranges prefetched concurrently), the record parsed once, the images decoded,
the sample processor applied; a bad sample becomes a counted :class:`Skipped` (or an error with ``on_error=raise``).
A shard that cannot be read (missing, not a regular file, a link out of its folder, a span past its end, a failed
or dead remote shard) is the skip ``unreadable_shard``; too many dead remote shards stop the run
(:class:`~lmm.data.remote.RemoteUnavailableError` passes through, never a skip)."""

from __future__ import annotations

import json
import logging
import os

from lmm.data.batch import Example, Skipped
from lmm.data.images import ImageLoadError
from lmm.data.mixture import SourcedRecord
from lmm.data.processor import SampleProcessor
from lmm.data.records import RecordError, parse_record
from lmm.data.remote import RemoteReader, RemoteReadError, RemoteUnavailableError, is_url
from lmm.data.shards import decode_image, read_member
from lmm.imaging import max_image_pixels

log = logging.getLogger(__name__)


class SampleReader:
    """One manifest item ``(key, id, source, shard path, members)`` → :class:`Example`, or :class:`Skipped` with the
    reason (``on_error="raise"`` raises instead). ``handles`` caches open local shards (``path → (fd, size)``)."""

    def __init__(self, processor: SampleProcessor, on_error: str = "skip"):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        max_image_pixels()  # a bad LMM_MAX_IMAGE_PIXELS stops the run here, not as a skip of every image sample
        self.processor, self.on_error, self.handles = processor, on_error, {}
        self.remote: RemoteReader | None = None
        self.fetched: dict[tuple[str, int], bytes | RemoteReadError] = {}  # a micro-batch's prefetched members

    def prefetch(self, items: list[tuple]) -> None:
        """Fetch the members of a micro-batch's items from a remote shard folder at once (concurrent ranged reads)."""
        spans = [(shard, span[0], span[1]) for _, _, _, shard, members in items if is_url(shard)
                 for span in members.values()]
        if spans:
            self.fetched = dict(zip(((s, o) for s, o, _ in spans), self._remote().read_many(spans)))

    def _remote(self) -> RemoteReader:
        if self.remote is None:
            self.remote = RemoteReader()  # made in the loader worker that reads (its thread pool is not forked)
        return self.remote

    def _read(self, shard: str, span: list[int], sid: str) -> bytes:
        try:
            if is_url(shard):
                got = self.fetched.pop((shard, span[0]), None)
                if isinstance(got, RemoteReadError):
                    raise got
                if got is None:
                    got = self._remote().read(shard, span[0], span[1])
                return got
            return read_member(shard, span, self.handles)
        except OSError as e:  # RemoteReadError included; their messages name the shard, the OS's may not
            raise RecordError(sid, "unreadable_shard", str(e) if str(shard) in str(e) else f"{shard}: {e}") from None

    def __call__(self, item: tuple) -> Example | Skipped:
        key, sid, source, shard, members = item
        try:
            data = self._read(shard, members["json"], sid)
            try:
                meta = json.loads(data)
                raw, exts = meta["record"], list(meta["images"])
            except (ValueError, KeyError, TypeError) as e:
                raise RecordError(sid, "malformed_record", f"{shard}:{key}: {e}") from None
            record = SourcedRecord(**vars(parse_record(raw)), source=source)
            images = []
            for ext in exts:
                if ext not in members:
                    raise RecordError(record.id, "missing_image", f"no member {key}.{ext} in {shard}")
                try:
                    images.append(decode_image(self._read(shard, members[ext], sid), f"{shard}:{key}.{ext}"))
                except ImageLoadError as e:
                    raise RecordError(record.id, e.reason, e.detail) from None
            return self.processor(record, images, source)
        except RecordError as e:
            if self.on_error == "raise":
                raise
            log.warning("skipped %s", e)
            return Skipped(e.sample_id, e.reason, e.detail)
        except RemoteUnavailableError:  # the remote folder is gone: the run stops, it does not skip the epoch
            raise
        except Exception as e:  # a bug must not kill a worker silently mid-epoch: counted, logged, or raised
            if self.on_error == "raise":
                raise
            log.warning("skipped sample %r (%s): unexpected %s: %s", sid, key, type(e).__name__, e)
            return Skipped(sid, "load_error", f"{type(e).__name__}: {e}")

    def close(self) -> None:
        for fd, _ in self.handles.values():
            os.close(fd)
        self.handles.clear()
        self.fetched.clear()
        if self.remote is not None:
            self.remote.close()
