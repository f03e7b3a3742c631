"""The files a checkpoint is made of, written so that none is ever half-written under its final name: ``torch.save``
to a temporary file in the same folder, fsync, rename (:func:`atomic_torch_save`, Lightning's
:class:`AtomicCheckpointIO`); small text and JSON files likewise. And :class:`ResumeError`, what every check of a
checkpoint raises."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lmm.common import atomic_write


class ResumeError(RuntimeError):
    pass


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a half-written file under a checkpoint's name, and streams to disk
    (Lightning's own ``_atomic_save`` first builds the whole checkpoint in memory)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(data: dict, path: str | Path) -> Path:
    return write_text_atomic(json.dumps(data, indent=2, default=str), path)
