"""Fault tolerance: atomic checkpoints every N optimizer steps, resume of an interrupted stage, pre-emption.

Layout of a run folder (``hydra.run.dir``)::

    <stage>/checkpoints/step-000050.ckpt   every ``checkpointing.every_n_steps`` optimizer steps, the newest K kept
    <stage>/last.ckpt                      the stage's final trainable weights (handed to the next stage)
    <stage>/stage_done.json                written last: the stage finished (``resume=auto`` does not redo it)

A checkpoint is a Lightning ``.ckpt`` (trainable weights, optimizer, scheduler, loop counters, the DataModule's
data position) plus ``lmm``: RNG states, the data accounting of the module, the MLflow run id, and the run folder
and stage that wrote it (``resume=<file>`` continues only that run: :func:`check_checkpoint_origin`). Files are
written to a temporary name in the same folder, fsynced and renamed (never a half-written checkpoint under its
final name).
Under DeepSpeed a checkpoint is a folder of per-rank shards, complete once every rank's shard is written and rank 0
has recorded them all (``lmm_complete.json``, then ``latest``: :mod:`lmm.training.deepspeed_checkpoint`); it is read
with weights-only loads only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

# the checkpoint files' primitives and the error, importable from here as before
from lmm.training.checkpoint_io import (  # noqa: F401
    AtomicCheckpointIO,
    ResumeError,
    atomic_torch_save,
    write_json_atomic,
    write_text_atomic,
)
from lmm.training.deepspeed_checkpoint import (
    check_deepspeed_checkpoint,
    client_state,
    is_refusal,
    refused,
    weights_only_loads,
)

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"step-(\d+)\.ckpt$")
DONE_FILE = "stage_done.json"


# --------------------------------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------- checkpoint callback
class StepCheckpoints(L.Callback):
    """``<dirpath>/step-<N>.ckpt`` (``dirpath`` None: ``<trainer.default_root_dir>/checkpoints``) every
    ``every_n_steps`` optimizer steps (the newest ``keep_last`` kept), and on SIGTERM (a cluster's pre-emption notice): finish the current optimizer step, write a checkpoint, stop.

    The SIGTERM handler only records the request (Lightning's own would raise at the next micro-batch, possibly in
    the middle of gradient accumulation); every rank decides at the same optimizer-step boundary, and every rank
    takes part in the save (sharded strategies gather). ``preempted`` then holds the checkpoint's path; the caller
    exits without marking the stage done."""

    def __init__(self, dirpath: str | Path | None = None, every_n_steps: int | None = None, keep_last: int = 2):
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every, self.keep_last = int(every_n_steps or 0), max(1, int(keep_last))
        self.requested = False
        self.preempted: Path | None = None
        self._previous = None
        self._step_at_start = 0
        self._children: list = []

    def _handler(self, signum, frame) -> None:
        self.requested = True
        for proc in self._children:  # ranks that Lightning started itself (one node, no cluster launcher)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        log.warning("SIGTERM received: a checkpoint is written at the end of the current optimizer step")

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "checkpoints"

    def on_train_start(self, trainer, pl_module) -> None:
        self._children = list(getattr(trainer.strategy.launcher, "procs", None) or [])
        self._previous = signal.signal(signal.SIGTERM, self._handler)  # replaces Lightning's (restored at the end)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._step_at_start:  # still accumulating: not a step boundary
            return
        requested = self.requested
        if trainer.world_size > 1:
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        if not requested and not (self.every and step % self.every == 0):
            return
        path = self.dirpath / f"step-{step:06d}.ckpt"
        trainer.save_checkpoint(str(path))
        if trainer.is_global_zero:
            self.prune()
        if requested:
            self.preempted = path
            trainer.should_stop = True
            log.warning("pre-empted: checkpoint %s written at step %d; continue with resume=auto", path, step)

    def prune(self) -> None:
        found = sorted(self.dirpath.glob("step-*.ckpt"), key=checkpoint_step)
        for old in found[: -self.keep_last]:
            if old.is_dir():
                import shutil

                shutil.rmtree(old)
            else:
                old.unlink()


# --------------------------------------------------------------------------------------------------- resuming
def checkpoint_step(path: Path) -> int:
    m = CKPT_RE.search(path.name)
    return int(m.group(1)) if m else -1


def validate_checkpoint(path: str | Path) -> dict:
    """Open a checkpoint cheaply (memory-mapped, tensors not read) after checking every zip member's CRC; return its
    ``lmm`` entry. Raises :class:`ResumeError` naming the file for a truncated or corrupt one. A DeepSpeed folder
    counts only with every rank's shard recorded complete and at its recorded size
    (:func:`lmm.training.deepspeed_checkpoint.check_deepspeed_checkpoint`)."""
    path = Path(path)
    if path.is_dir():  # DeepSpeed: every rank's shard recorded complete, at its size (a ResumeError names the gap)
        return client_state(path)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise ResumeError(f"{path}: corrupt checkpoint (member {bad} fails its CRC)")
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except ResumeError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, RuntimeError from torch.load, pickle errors
        raise ResumeError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if "state_dict" not in ckpt or "loops" not in ckpt:
        raise ResumeError(f"{path}: not a Lightning training checkpoint (no state_dict / loops)")
    return ckpt.get("lmm") or {}


def find_resume_checkpoint(stage_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest valid checkpoint of an interrupted stage (a corrupt newest one is reported and skipped), with its
    ``lmm`` entry; ``None`` when the stage wrote none."""
    folder = Path(stage_dir) / "checkpoints"
    found = sorted((p for p in folder.glob("step-*.ckpt")), key=checkpoint_step, reverse=True)
    for path in found:
        try:
            return path, validate_checkpoint(path)
        except ResumeError as e:
            log.error("%s — falling back to the previous checkpoint", e)
    if found:
        raise ResumeError(f"no readable checkpoint in {folder} (tried {[p.name for p in found]})")
    return None


def checkpoint_origin(path: str | Path, info: dict) -> tuple[Path | None, str | None]:
    """The run folder and stage that wrote a checkpoint: its ``lmm`` entry's ``run_dir`` / ``stage``, else (an
    older checkpoint) the layout ``<run>/<stage>/checkpoints/step-N.ckpt`` or ``<run>/<stage>/last.ckpt``."""
    path = Path(path).absolute()
    if CKPT_RE.search(path.name) and path.parent.name == "checkpoints":
        run, stage = path.parents[2], path.parents[1].name
    elif path.name == "last.ckpt":
        run, stage = path.parents[1], path.parent.name
    else:
        run, stage = None, None
    return (Path(info["run_dir"]) if info.get("run_dir") else run), info.get("stage") or stage


def check_checkpoint_origin(path: str | Path, info: dict, run_dir: str | Path, stage: str) -> None:
    """``resume=<path>`` continues a stage of this run only: the checkpoint must lie in ``run_dir`` (a moved or
    copied run folder) or name it as the folder that wrote it, and belong to ``stage``. Otherwise a
    :class:`ResumeError` says whose it is and how to continue that run or start from its weights — resuming it
    here would continue another run's MLflow run and mix two runs' files."""
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    origin, origin_stage = checkpoint_origin(path, info)
    ours = run_dir in path.parents or (origin is not None and Path(origin).resolve() == run_dir)
    if ours and origin_stage in (None, stage):
        return
    if ours:
        raise ResumeError(f"{path} is a checkpoint of stage {origin_stage}, not of {stage}, the first stage of this "
                          f"run not yet finished: resume=auto picks the right one")
    whose = f"run {origin}" if origin else "an unknown run (not in a <run>/<stage>/ folder, no lmm.run_dir)"
    raise ResumeError(
        f"{path} was written by {whose}, not by this run ({run_dir}): resume continues the run that wrote a "
        f"checkpoint, in its own folder and MLflow run. Continue that run with python -m lmm.training.resume "
        f"{origin or '<its run folder>'} (or hydra.run.dir={origin or '<its run folder>'} resume={path}); start a "
        f"new run from its weights with stages.<stage>.init_connector=<its run>/{origin_stage or '<stage>'}/"
        f"connector.safetensors (the connector) or run_stages=[...] in that run's folder.")


def stage_done(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / DONE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def consolidate_deepspeed(path: str | Path) -> Path:
    """A DeepSpeed checkpoint folder's trainable weights as one fp32 file (Lightning's ZeRO converter), written once
    and atomically: call on one rank, then synchronise. The folder must be complete (every rank's shard), and its
    shards are read with weights-only loads (DeepSpeed's converter asks for full unpickling; a shard holding anything
    but tensors, plain values and DeepSpeed's few checkpoint types is refused). A plain file is returned as it is."""
    path = Path(path)
    if not path.is_dir():
        return path
    out = path / "fp32_state.pt"
    if not out.exists():
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        check_deepspeed_checkpoint(path)
        tmp = path / f".fp32_state.pt.tmp-{os.getpid()}"
        try:
            with weights_only_loads():
                convert_zero_checkpoint_to_fp32_state_dict(str(path), str(tmp))
        except Exception as e:
            tmp.unlink(missing_ok=True)
            if is_refusal(e):
                raise refused(path, e) from e
            raise
        os.replace(tmp, out)
    return out


def load_trainable_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights a stage checkpoint holds, as a LightningModule state dict (``model.…`` keys); for a
    DeepSpeed checkpoint folder, its consolidated fp32 file (:func:`consolidate_deepspeed`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "fp32_state.pt"
        if not path.exists():
            raise ResumeError(f"{path.parent}: DeepSpeed checkpoint not consolidated (consolidate_deepspeed)")
    # memory-mapped: the weights are copied into the model from the page cache, not held twice in a process's RAM
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
