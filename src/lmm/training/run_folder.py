"""A run folder (``hydra.run.dir``, = ``paths.output_dir``) holds one run: nothing of an earlier run is overwritten
by accident, and a resume says what it changed.

* **An earlier run** is a folder with our ``config.yaml`` or a stage folder (``stage_done.json``, ``last.ckpt``,
  ``checkpoints/``). Starting into it without ``resume`` is refused, naming the folder and the two ways on:
  ``resume=auto`` (continue it) or ``overwrite=true`` (start again: its stage folders, ``config*.yaml`` and
  ``eval/`` are removed first, so that no old checkpoint mixes with the new run's — their higher step numbers
  would make the new run's own be pruned). Other files (an ``mlflow.db``, Hydra's log) are kept.
* The refusal comes **before Hydra writes anything** into the folder: :class:`RunFolderGuard`, a Hydra callback
  (``hydra.callbacks.run_folder`` in conf/train.yaml), checks at ``on_run_start``, before Hydra saves
  ``.hydra/{config,hydra,overrides}.yaml``; :func:`prepare_run_folder` checks again when training starts (runs
  composed in-process, multirun jobs — Hydra has written their ``.hydra/`` by then).
* The run keeps **its own copy of its overrides** (``<run>/overrides.yaml``, rewritten on each accepted start or
  resume), which :mod:`lmm.training.resume` reads first: Hydra rewrites ``.hydra/overrides.yaml`` on every start.
* **A resume** compares the run's recorded ``config.yaml`` with the new resolved config: the keys that differ
  (old → new) are logged and tag the stage's MLflow run (:func:`config_changes`).

Only the launching process of rank 0 checks, clears and writes (``RANK`` / ``LOCAL_RANK`` / ``SLURM_PROCID``): the
other ranks start later (Lightning's launcher) or at the same time, and would see rank 0's files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

STAGE_MARKERS = ("stage_done.json", "last.ckpt", "checkpoints")  # a stage folder of an earlier run
CLEARED = ("config.yaml", "config_resume.yaml", "overrides.yaml", "eval")  # besides the stage folders
OWN_OVERRIDES = "overrides.yaml"
DROPPED = ("hydra.run.dir", "resume", "overwrite")  # not replayed: a resume sets the folder and resume=auto itself
NOT_COMPARED = ("resume", "overwrite", "run_name")  # differ on every resume (run_name holds the start time)
RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # Lightning's order (rank_zero)


class RunFolderError(ValueError):
    pass


def launch_rank() -> int:
    """This process's rank as its launcher set it (0 when none did)."""
    for var in RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def stage_folders(out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.is_symlink()
                  and any((p / m).exists() for m in STAGE_MARKERS))


def earlier_run(out_dir: str | Path) -> list[str]:
    """What in ``out_dir`` shows an earlier run (empty: none)."""
    out_dir = Path(out_dir)
    found = ["config.yaml"] if (out_dir / "config.yaml").is_file() else []
    return found + [f"{p.name}/{m}" for p in stage_folders(out_dir) for m in STAGE_MARKERS if (p / m).exists()]


def check_modes(out_dir: str | Path, resume: Any, overwrite: Any) -> None:
    if resume and overwrite:
        raise RunFolderError(f"resume={resume} and overwrite=true together: a resume continues the run in {out_dir}, "
                             f"overwrite starts it again — choose one")


def check_run_folder(out_dir: str | Path, resume: Any, overwrite: Any) -> list[str]:
    """Raise :class:`RunFolderError` when a new run would overwrite an earlier one in ``out_dir``; else what
    ``overwrite=true`` will clear (``[]`` for an empty folder or a resume)."""
    check_modes(out_dir, resume, overwrite)
    found = [] if resume else earlier_run(out_dir)
    if found and not overwrite:
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise RunFolderError(
            f"{out_dir} holds an earlier run ({shown}); nothing was written. Continue it with resume=auto "
            f"(python -m lmm.training.resume {out_dir}), start it again with overwrite=true (its stage folders, "
            f"config.yaml and eval/ are deleted first), or choose another hydra.run.dir.")
    return found


def prepare_run_folder(out_dir: str | Path, resume: Any, overwrite: Any) -> None:
    """Rank 0, before anything is written: refuse an earlier run (:func:`check_run_folder`), or clear it with
    ``overwrite=true``; then create the folder."""
    out_dir = Path(out_dir)
    check_modes(out_dir, resume, overwrite)  # the same config on every rank: refused alike
    if launch_rank() != 0:  # the folder is rank 0's to judge: the others may see its files already
        return
    if check_run_folder(out_dir, resume, overwrite):
        cleared = stage_folders(out_dir) + [out_dir / n for n in CLEARED if (out_dir / n).exists()]
        for path in cleared:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        log.warning("overwrite=true: the earlier run in %s was removed (%s)", out_dir,
                    ", ".join(p.name for p in cleared))
    out_dir.mkdir(parents=True, exist_ok=True)


def replayable(overrides: list[str]) -> list[str]:
    """``overrides`` without those a resume sets itself (:data:`DROPPED`)."""
    return [o for o in overrides if o.lstrip("+~").partition("=")[0] not in DROPPED]


def save_overrides(out_dir: str | Path) -> Path | None:
    """Rank 0: the command line's overrides (Hydra's, without ``hydra.run.dir``, ``resume``, ``overwrite``) as the
    run's own ``overrides.yaml``, which :mod:`lmm.training.resume` replays. None when Hydra did not start the run."""
    from hydra.core.hydra_config import HydraConfig

    if launch_rank() != 0 or not HydraConfig.initialized():
        return None
    from lmm.training.checkpointing import write_text_atomic

    overrides = replayable([str(o) for o in HydraConfig.get().overrides.task])
    return write_text_atomic(yaml.safe_dump(overrides), Path(out_dir) / OWN_OVERRIDES)


def config_changes(recorded: str | Path, resolved: dict) -> list[str]:
    """``key: old → new`` for every key where ``resolved`` differs from the run's recorded config (a file)."""
    from lmm.tracking.mlflow import flatten

    path = Path(recorded)
    if not path.is_file():
        return []
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        log.warning("%s is unreadable (%s): the resumed config is not compared with it", path, e)
        return []
    before, after = flatten(old if isinstance(old, dict) else {}), flatten(resolved)
    changed = []
    for key in sorted(set(before) | set(after)):
        if key.split(".")[0] in NOT_COMPARED or before.get(key, "<unset>") == after.get(key, "<unset>"):
            continue
        changed.append(f"{key}: {before.get(key, '<unset>')} → {after.get(key, '<unset>')}")
    return changed


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra is a dependency
    _HydraCallback = object


class RunFolderGuard(_HydraCallback):
    """Hydra callback: refuse a new run into a folder that holds an earlier one before Hydra writes into it."""

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        if launch_rank() != 0:
            return
        folder = os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))
        if config.get("plan") and earlier_run(folder):  # a plan trains nothing, but Hydra would write .hydra/
            raise SystemExit(f"train.py: {folder} holds an earlier run; Hydra would overwrite its .hydra/ files: "
                             f"give the plan another hydra.run.dir")
        try:
            check_run_folder(folder, config.get("resume"), config.get("overwrite"))
        except RunFolderError as e:
            raise SystemExit(f"train.py: {e}") from None
