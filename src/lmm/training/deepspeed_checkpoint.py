"""DeepSpeed checkpoint folders that count only when every rank's shard is on disk, and read with ``weights_only``.

A DeepSpeed checkpoint (a step checkpoint or ``last.ckpt`` under ``strategy=deepspeed``) is a folder: DeepSpeed
writes each rank's shard into ``<folder>/checkpoint/`` (``*zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` per rank;
``mp_rank_00_model_states.pt`` from rank 0, or one ``zero_pp_rank_<r>_mp_rank_00_model_states.pt`` per rank under
ZeRO-3), with plain ``torch.save`` calls, and DeepSpeed's rank 0 writes the ``latest`` tag as soon as its *own* files
are written — before the other ranks have finished theirs. Here (:class:`~lmm.training.deepspeed_strategy`) DeepSpeed
writes no ``latest``; instead:

1. rank 0 first removes an earlier save's ``lmm_complete.json``, ``latest`` and rank markers (a save over a
   half-written folder never looks complete);
2. every rank, once DeepSpeed has written its files, fsyncs them and writes ``checkpoint/lmm_rank_<r>.json`` (its
   files and their sizes; atomic);
3. after a barrier rank 0 checks every rank's marker and files, writes ``lmm_complete.json`` (world size, ZeRO stage,
   every rank's files and sizes), then ``latest``.

:func:`check_deepspeed_checkpoint` accepts a folder only with that manifest, the shards it expects for the recorded
world size (every rank's optimizer shard; the model states of rank 0, or of every rank under ZeRO-3), each at its
recorded size and a readable zip. Everything that reads such a folder (resume, consolidation to fp32) does it inside
:func:`weights_only_loads`: every ``torch.load`` — DeepSpeed's own, which pass ``weights_only=False`` — runs with
``weights_only=True`` (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), with only DeepSpeed's few checkpoint types
allowed (:data:`SAFE_GLOBALS`): a shard holding anything else is refused, never executed.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from lmm.training.checkpoint_io import ResumeError, write_json_atomic, write_text_atomic

TAG = "checkpoint"  # Lightning's tag for every DeepSpeed save
MANIFEST = "lmm_complete.json"
FORCE, FORCE_NO = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

# What a bf16 ZeRO-2 / ZeRO-3 checkpoint of DeepSpeed 0.19 pickles besides tensors and plain values
# (torch.serialization.get_unsafe_globals_in_checkpoint on shards the engine wrote; tests/training/
# test_deepspeed_cpu.py): the optimizer shard's static loss scaler, its ZeRO stage and its fragment addresses.
# Anything else in a shard stops the load.
SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class DeepSpeedCheckpointError(ResumeError):
    """A DeepSpeed checkpoint folder that is incomplete, truncated, or holds what a weights-only load refuses."""


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def safe_globals() -> list:
    return [g for g in map(_resolve, SAFE_GLOBALS) if g is not None]


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside — DeepSpeed's and Lightning's included, whatever they pass — loads with
    ``weights_only=True``, allowing :data:`SAFE_GLOBALS` only. Process-wide while it lasts (an environment variable
    torch reads on each load)."""
    saved = {k: os.environ.get(k) for k in (FORCE, FORCE_NO)}
    os.environ[FORCE] = "1"
    os.environ.pop(FORCE_NO, None)  # both set is an error in torch; here weights-only wins
    try:
        with torch.serialization.safe_globals(safe_globals()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refused(folder: Path, error: Exception) -> DeepSpeedCheckpointError:
    """Our one-line error for a shard that a weights-only load refused (torch's own message is a page long)."""
    first = str(error).strip().splitlines()
    detail = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first
                  else type(error).__name__)
    return DeepSpeedCheckpointError(
        f"{folder}: a shard holds an object a weights-only load refuses ({detail}); it was not loaded. A DeepSpeed "
        f"checkpoint written by lmm holds tensors, plain values and {len(SAFE_GLOBALS)} DeepSpeed types only: "
        f"delete this checkpoint (resume=auto then falls back to the previous one).")


def is_refusal(error: BaseException) -> bool:
    return isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in str(error)


# ------------------------------------------------------------------------------------------------- writing
def rank_marker(folder: Path, rank: int) -> Path:
    return Path(folder) / TAG / f"lmm_rank_{rank}.json"


def begin_save(folder: str | Path) -> None:
    """Rank 0, before any rank writes: the folder stops counting as complete until :func:`complete_save`."""
    folder = Path(folder)
    for stale in (folder / MANIFEST, folder / "latest", *(folder / TAG).glob("lmm_rank_*.json")):
        stale.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_rank_done(folder: str | Path, rank: int, files: list[str | Path]) -> Path:
    """Every rank, after DeepSpeed wrote its ``files``: fsync them and record them with their sizes."""
    folder = Path(folder)
    sizes = {}
    for f in map(Path, files):
        _fsync(f)
        sizes[f.relative_to(folder).as_posix()] = f.stat().st_size
    _fsync(folder / TAG)
    return write_json_atomic({"rank": rank, "files": sizes}, rank_marker(folder, rank))


def complete_save(folder: str | Path, world_size: int, zero_stage: int) -> dict:
    """Rank 0, after every rank's :func:`mark_rank_done` (a barrier between): check each rank's files, then write
    the manifest and the ``latest`` tag — the folder counts from here on."""
    folder = Path(folder)
    shards = {}
    for rank in range(world_size):
        marker = rank_marker(folder, rank)
        if not marker.exists():
            raise DeepSpeedCheckpointError(f"{folder}: rank {rank} wrote no {marker.name} after its shard")
        shards[str(rank)] = json.loads(marker.read_text())["files"]
    manifest = {"format": 1, "tag": TAG, "world_size": world_size, "zero_stage": zero_stage, "shards": shards}
    _check_files(folder, manifest)
    write_json_atomic(manifest, folder / MANIFEST)
    write_text_atomic(TAG, folder / "latest")
    return manifest


# ----------------------------------------------------------------------------------------------- checking
def _check_files(folder: Path, manifest: dict) -> None:
    world, stage = int(manifest["world_size"]), int(manifest["zero_stage"])
    shards = manifest["shards"]
    if sorted(shards, key=int) != [str(r) for r in range(world)]:
        raise DeepSpeedCheckpointError(f"{folder}: {MANIFEST} lists ranks {sorted(shards)}, not the {world} of its "
                                       f"world size")
    for rank in range(world):
        files = shards[str(rank)]
        names = [Path(n).name for n in files]
        if not any(f"zero_pp_rank_{rank}_" in n and n.endswith("_optim_states.pt") for n in names):
            raise DeepSpeedCheckpointError(f"{folder}: rank {rank}'s optimizer shard "
                                           f"(*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt) is not recorded")
        if (rank == 0 or stage == 3) and not any(n.endswith("_model_states.pt") for n in names):
            raise DeepSpeedCheckpointError(f"{folder}: rank {rank}'s model states (*_model_states.pt) are not "
                                           f"recorded")
        for name, size in files.items():
            path = folder / name
            if not path.is_file():
                raise DeepSpeedCheckpointError(f"{folder}: rank {rank}'s shard {name} is missing")
            if path.stat().st_size != size:
                raise DeepSpeedCheckpointError(f"{folder}: rank {rank}'s shard {name} has {path.stat().st_size} "
                                               f"bytes, {size} when written (truncated or replaced)")
            try:
                zipfile.ZipFile(path).close()  # the zip's directory is at its end: a cut-off file has none
            except zipfile.BadZipFile as e:
                raise DeepSpeedCheckpointError(f"{folder}: rank {rank}'s shard {name} is not a readable "
                                               f"checkpoint ({e})") from e


def check_deepspeed_checkpoint(folder: str | Path) -> dict:
    """The manifest of a complete DeepSpeed checkpoint folder; :class:`DeepSpeedCheckpointError` (a
    :class:`ResumeError`) naming what is missing, truncated or unrecorded otherwise."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise DeepSpeedCheckpointError(
            f"{folder}: DeepSpeed checkpoint folder without {MANIFEST} — its save did not finish on every rank "
            f"(interrupted), or it was not written by lmm")
    try:
        manifest = json.loads(manifest_path.read_text())
        int(manifest["world_size"]), int(manifest["zero_stage"]), dict(manifest["shards"])
    except (ValueError, KeyError, TypeError) as e:
        raise DeepSpeedCheckpointError(f"{folder}: unreadable {MANIFEST} ({type(e).__name__}: {e})") from e
    latest = folder / "latest"
    if not latest.exists() or latest.read_text().strip() != manifest.get("tag", TAG):
        raise DeepSpeedCheckpointError(f"{folder}: its 'latest' tag is missing or names another tag than "
                                       f"{MANIFEST}")
    _check_files(folder, manifest)
    return manifest


def client_state(folder: str | Path) -> dict:
    """The ``lmm`` entry a checked DeepSpeed checkpoint's model states hold (weights-only, memory-mapped)."""
    folder = Path(folder)
    manifest = check_deepspeed_checkpoint(folder)
    model = next(n for n in manifest["shards"]["0"] if n.endswith("_model_states.pt"))
    try:
        with weights_only_loads():
            state = torch.load(folder / model, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        if is_refusal(e):
            raise refused(folder, e) from e
        raise DeepSpeedCheckpointError(f"{folder}: unreadable model states {model} ({type(e).__name__}: {e})") from e
    return state.get("lmm") or {}
