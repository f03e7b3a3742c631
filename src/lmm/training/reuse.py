"""Stage reuse: a stage whose resolved inputs equal those of a stage that finished before is not trained again.

Table 2's rows 0–2, 3–5 and 6–8 share stage 1 (same tower, connector, LLM, LCS-558K selection, template,
hyperparameters and seed); running the table trains it four times, not ten. The **key** of a stage is a digest of
what determines its weights: ``model``, the stage's ``data`` node with the data settings all stages share (not the
other stages' mixtures, nor ``num_workers``, which never changes a batch), ``stages.<name>`` (hyperparameters,
template, strategy), ``seed``, the trainer's devices / nodes / precision / accelerator, the keys of the stages
before it, and the code that trains it (the source of ``lmm.models``, ``training``, ``data``, ``text``, ``imaging``
and ``common``). Not in the key: names, tags, paths, logging, checkpoint cadence, evaluation, and the stage's
``compile`` block — ``torch.compile`` runs the same computation (the same loss and gradients up to float rounding,
tests/models/test_compile.py), so a stage trained without it serves a run with it and vice versa.

A finished stage is recorded under ``stage_reuse.index`` (default ``${paths.cache_dir}/stage_index``). A later run with the same key links
the finished stage's files (``last.ckpt``, ``connector.safetensors``, ``stage_done.json``, ``model/``) into its own stage folder,
writes ``reused_from.json`` beside them, and goes on from there; its MLflow runs are tagged
``reused.<stage>.run_id`` / ``reused.<stage>.dir``. ``stage_reuse.enabled=false`` (or ``LMM_STAGE_REUSE=false``)
turns it off.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig

from lmm.common import digest, plain

log = logging.getLogger(__name__)

CODE_PARTS = ("models", "training", "data", "text", "imaging")
LINKED = ("last.ckpt", "connector.safetensors", "stage_done.json", "model")  # model/: the last stage's folder
REUSED_FILE = "reused_from.json"
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "precision")
NOT_IN_KEY = ("compile",)  # stage keys that change how fast a stage trains, not what it trains


@lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the source files that decide what a stage trains."""
    root = Path(__file__).resolve().parents[1]
    files = sorted(p for part in CODE_PARTS for p in (root / part).rglob("*.py")) + [root / "common.py"]
    return digest([[str(p.relative_to(root)), p.read_bytes().hex()] for p in files], 16)


def stage_key(cfg: DictConfig, name: str) -> str:
    stages = list(cfg.run_stages)
    data = plain(cfg.data)
    shared = {k: v for k, v in data.items() if k not in cfg.stages and k != "num_workers"}
    trainer = plain(cfg.trainer)
    stage = {k: v for k, v in plain(cfg.stages[name]).items() if k not in NOT_IN_KEY}
    inputs = {"model": plain(cfg.model), "data": {**shared, name: data.get(name)}, "stage": stage,
              "seed": cfg.seed, "tf32": cfg.get("tf32"), "trainer": {k: trainer.get(k) for k in TRAINER_KEYS},
              "before": [stage_key(cfg, s) for s in stages[:stages.index(name)]], "code": code_version()}
    return digest(inputs, 16)


def _index(cfg: DictConfig, name: str) -> Path:
    return Path(cfg.stage_reuse.index) / f"{name}-{stage_key(cfg, name)}.json"


def record(cfg: DictConfig, name: str, stage_dir: Path, mlflow_run_id: str | None) -> None:
    """Rank 0, after a stage finished: remember where its files are (an index entry per key)."""
    if not cfg.get("stage_reuse"):
        return
    path = _index(cfg, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = stage_dir.resolve()
    reused = stage_dir / REUSED_FILE
    if reused.exists():  # a reused stage points at its origin, never at a chain of links
        return
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"stage_dir": str(source), "mlflow_run_id": mlflow_run_id,
                               "tracking_uri": cfg.logger.tracking_uri, "finished": time.time()}, indent=1))
    tmp.replace(path)


def reuse(cfg: DictConfig, name: str, stage_dir: Path) -> dict | None:
    """Link an earlier finished stage with the same key into ``stage_dir``; its record, or None (train it)."""
    if not (cfg.get("stage_reuse") or {}).get("enabled") or (stage_dir / "stage_done.json").exists():
        return None
    path = _index(cfg, name)
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    source = Path(entry["stage_dir"])
    if not all((source / f).exists() for f in ("last.ckpt", "stage_done.json")):
        log.warning("stage %s: the finished stage recorded for its key (%s) is gone; training it", name, source)
        return None
    stage_dir.mkdir(parents=True, exist_ok=True)
    for f in LINKED:
        link = stage_dir / f
        if (source / f).exists() and not link.exists():
            try:
                link.symlink_to(source / f)
            except FileExistsError:  # another rank linked it first
                pass
    info = {"source_dir": str(source), "mlflow_run_id": entry.get("mlflow_run_id"),
            "tracking_uri": entry.get("tracking_uri"), "key": stage_key(cfg, name)}
    (stage_dir / REUSED_FILE).write_text(json.dumps(info, indent=1))
    log.info("stage %s: same inputs as the finished stage in %s (MLflow run %s) — reused, not trained again "
             "(stage_reuse=false trains it)", name, source, entry.get("mlflow_run_id"))
    return info


def reuse_tags(reused: dict[str, dict]) -> dict[str, str]:
    """MLflow tags of the later stages' runs: where each reused stage came from."""
    tags = {}
    for name, info in reused.items():
        tags[f"reused.{name}.run_id"] = str(info.get("mlflow_run_id"))
        tags[f"reused.{name}.dir"] = info["source_dir"]
    return tags
