"""Small things every layer needs, kept in one leaf: a config value as plain Python (a Hydra / OmegaConf node
resolved, anything else as it is), an exclusive file lock between processes, and a cache folder named by a hash of
what it depends on, built atomically (a half-built folder is never found; processes racing to build it leave one
complete copy); first-fit-decreasing bin packing; a path confined to a folder (:func:`inside`)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
