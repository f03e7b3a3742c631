"""Small things every layer needs, kept in one leaf: a config value as plain Python (a Hydra / OmegaConf node
resolved, anything else as it is), an exclusive file lock between processes, and a cache folder named by a hash of
what it depends on, built atomically (a half-built folder is never found; processes racing to build it leave one
complete copy); first-fit-decreasing bin packing; a path confined to a folder (:func:`inside`); a file opened
only when it is a regular one (:func:`open_regular`); a file or a folder written whole or not at all
(:func:`atomic_write`, :func:`replacing_folder`)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class UnsafePathError(ValueError):
    """A path taken from a file (a record, a manifest, a question file) that would leave its folder."""

    def __init__(self, path: str, root: str | Path, why: str):
        self.path, self.root, self.why = path, str(root), why
        super().__init__(f"{path!r} would leave {root}: {why}")


def inside(root: str | Path, name: str) -> Path:
    """``root/name`` when it stays inside ``root``, else :class:`UnsafePathError`. ``name`` comes from a file
    someone else wrote: an absolute path, a drive (``C:``), a ``..`` part or a link inside ``root`` that resolves
    outside it are all refused (``root`` itself may be a link: it is resolved first). Returns the resolved path."""
    text = str(name)
    if not text or "\0" in text:
        raise UnsafePathError(text, root, "an empty name or a NUL byte")
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "\\")) or ".." in parts or parts[0].endswith(":"):
        raise UnsafePathError(text, root, "absolute or '..'")
    base = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(base, text))
    if os.path.commonpath([base, resolved]) != base:
        raise UnsafePathError(text, root, f"a link resolving to {resolved}")
    return Path(resolved)


def open_regular(path: str | Path) -> tuple[int, int]:
    """``(fd, size)`` of ``path`` opened read-only, when it is a regular file (the caller closes ``fd``); else an
    :class:`OSError` whose ``strerror`` says so. Opened non-blocking: a FIFO is refused, never waited on (a device
    such as ``/dev/zero`` or a folder likewise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a folder is never read)", str(path))
    return fd, st.st_size


@contextmanager
def atomic_write(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """A UTF-8 text handle (a bytes handle with ``binary``) on a temporary sibling of ``path`` that replaces ``path``
    (a rename, after an fsync) only when the block ends without error: a failed write never leaves a half-written
    ``path``, nor the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with (tmp.open("wb") if binary else tmp.open("w", encoding="utf-8")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing_folder(dst: str | Path) -> Iterator[Path]:
    """A fresh temporary sibling of ``dst`` to fill. When the block succeeds it takes ``dst``'s place: an existing
    ``dst`` is renamed aside first (back again if the swap fails) and deleted once the new folder is in place — a
    link to a folder is replaced, its target left alone. When the block fails the temporary folder is deleted and
    ``dst`` is left as it was."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (dst.with_name(f".{dst.name}.{what}{os.getpid()}") for what in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (dst.exists() or dst.is_symlink()):
        tmp.rename(dst)
        return
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    try:
        tmp.rename(dst)
    except OSError:
        old.rename(dst)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def plain(node: Any) -> Any:
    """``node`` as plain containers when it is an OmegaConf node (interpolations resolved), else ``node``."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency; plain values need no conversion
        return node
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (made if missing; released when the process ends, even by a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def digest(key: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-able ``key`` (dict order does not matter)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]


def build_once(folder: str | Path, build: Callable[[Path], Any], done: str) -> Path:
    """``folder`` if its ``done`` file exists; else ``build(tmp)`` fills a fresh temporary sibling, which then
    replaces ``folder`` by a rename (the ``done`` file must be among what ``build`` writes)."""
    folder = Path(folder)
    if (folder / done).exists():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    if not (tmp / done).exists():
        raise RuntimeError(f"building {folder} wrote no {done}")
    if (folder / done).exists():  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    try:
        tmp.rename(folder)
    except OSError:  # renamed by a racing process in between: its copy is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def first_fit_decreasing(items: Iterable[int], size: Callable[[int], int],
                         fits: Callable[[list[int], int, int], bool]) -> list[list[int]]:
    """Bin packing: each item, largest ``size`` first (ties in the given order), into the first bin for which
    ``fits(bin, bin_size_sum, item)``, else into a new bin. A bin's first item is its largest."""
    bins: list[list[int]] = []
    sums: list[int] = []
    for i in sorted(items, key=size, reverse=True):
        k = next((k for k, b in enumerate(bins) if fits(b, sums[k], i)), len(bins))
        if k == len(bins):
            bins.append([])
            sums.append(0)
        bins[k].append(i)
        sums[k] += size(i)
    return bins
