"""Stage reuse: a stage whose resolved inputs equal those of a stage that finished before is not trained again.

Table 2's rows 0–2, 3–5 and 6–8 share stage 1 (same tower, connector, LLM, LCS-558K selection, template,
hyperparameters and seed); running the table trains it four times, not ten.

**The key** of a stage is a digest of what determines its weights: ``model``, the stage's ``data`` node with the
data settings all stages share (not the other stages' mixtures, nor ``num_workers``, which never changes a batch),
**the content of the stage's data** (:func:`data_fingerprint`: the sha256 of ``manifest.jsonl`` when
``data.<stage>.shards`` is set — a local folder or a URL, fetched with :class:`~lmm.data.remote.RemoteReader` —
else of the JSON the stage is converted from, ``data.<stage>.json``), ``stages.<name>`` (hyperparameters, template,
strategy), the training seed (``seed + training_seed_offset``, :func:`lmm.training.components.training_seed`; the
data's content covers the world that ``seed`` writes), the trainer's devices / nodes / precision / accelerator, the
keys of the stages before it, and the code that trains it (the source of ``lmm.models``, ``training``, ``data``, ``text``, ``imaging`` and
``common``). Not in the key: names, tags, paths, logging, checkpoint cadence, evaluation, the stage's ``compile``
block — ``torch.compile`` runs the same computation (the same loss and gradients up to float rounding,
tests/models/test_compile.py), so a stage trained without it serves a run with it and vice versa — and **the
contents of image folders and shard tar files**: a manifest or JSON that stays the same over changed images or
tars (same names, same spans) keeps its key. A local file is hashed once per process per (path, size, mtime); a
URL's manifest is fetched each time a key is computed.

A finished stage writes its key into its ``stage_done.json`` (``reuse_key``) and is then recorded under
``stage_reuse.index`` (default ``${paths.cache_dir}/stage_index``) — only there, after success: a failed stage
never enters the index. A later run with the same key takes the recorded stage only if its ``stage_done.json``
still holds that key (it finished, and its folder was not started again since). Its files (``last.ckpt``,
``connector.safetensors``, ``model/``, ``stage_done.json``) are **hard-linked** into the new stage folder (copied
across file systems; never a symlink, so deleting the source run leaves them whole), then ``reused_from.json`` is
written beside them; the new run's MLflow runs are tagged ``reused.<stage>.run_id`` / ``reused.<stage>.dir``.
``stage_reuse.enabled=false`` (or ``LMM_STAGE_REUSE=false``) turns it off.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig

from lmm.common import UnsafePathError, digest, inside, plain
from lmm.data.manifest import MANIFEST_NAME
from lmm.data.remote import RemoteReader, is_url, join
from lmm.training.checkpointing import DONE_FILE, write_json_atomic
from lmm.training.components import training_seed

log = logging.getLogger(__name__)

CODE_PARTS = ("models", "training", "data", "text", "imaging")
PLACED = ("last.ckpt", "connector.safetensors", "model", "stage_done.json")  # model/: the last stage's folder
KEY_FIELD = "reuse_key"  # in stage_done.json: the key the stage finished under
REUSED_FILE = "reused_from.json"
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "precision")
NOT_IN_KEY = ("compile",)  # stage keys that change how fast a stage trains, not what it trains
_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256 of a local file


@lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the source files that decide what a stage trains."""
    root = Path(__file__).resolve().parents[1]
    files = sorted(p for part in CODE_PARTS for p in (root / part).rglob("*.py")) + [root / "common.py"]
    return digest([[str(p.relative_to(root)), p.read_bytes().hex()] for p in files], 16)


def content_hash(path: str | Path) -> str | None:
    """sha256 of a file's bytes: a URL fetched whole (at most ``RemoteReader.max_file``), a local file read in
    chunks once per (path, size, mtime); None when a local file does not exist (yet)."""
    if is_url(path):
        return hashlib.sha256(RemoteReader().read(str(path))).hexdigest()
    path = Path(path)
    if not path.is_file():
        return None
    st = path.stat()
    cache = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if cache not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[cache] = h.hexdigest()
    return _HASHES[cache]


def data_fingerprint(cfg: DictConfig, name: str) -> dict:
    """What the stage's data are, by content: its shard folder's manifest, or the JSON it is converted from."""
    data = (cfg.get("data") or {}).get(name) or {}
    if data.get("shards"):
        return {"manifest": content_hash(join(data.shards, MANIFEST_NAME))}
    return {"json": content_hash(data.json) if data.get("json") else None}


def stage_key(cfg: DictConfig, name: str) -> str:
    """The stage's key (see the module docstring). May raise an ``OSError`` (a manifest URL that cannot be read)."""
    stages = list(cfg.run_stages)
    keys: dict[str, str] = {}
    for s in stages[:stages.index(name) + 1]:
        keys[s] = _key(cfg, s, [keys[b] for b in stages[:stages.index(s)]])
    return keys[name]


def _key(cfg: DictConfig, name: str, before: list[str]) -> str:
    data = plain(cfg.data)
    shared = {k: v for k, v in data.items() if k not in cfg.stages and k != "num_workers"}
    trainer = plain(cfg.trainer)
    stage = {k: v for k, v in plain(cfg.stages[name]).items() if k not in NOT_IN_KEY}
    inputs = {"model": plain(cfg.model), "data": {**shared, name: data.get(name)}, "stage": stage,
              "content": data_fingerprint(cfg, name), "seed": training_seed(cfg), "tf32": cfg.get("tf32"),
              "trainer": {k: trainer.get(k) for k in TRAINER_KEYS}, "before": before, "code": code_version()}
    return digest(inputs, 16)


def finished_key(cfg: DictConfig, name: str) -> str | None:
    """The key a finishing stage writes into its ``stage_done.json`` (None, and so never reused, when it cannot
    be computed)."""
    if not cfg.get("stage_reuse"):
        return None
    try:
        return stage_key(cfg, name)
    except (OSError, ValueError) as e:
        log.warning("stage %s: no stage-reuse key (%s); it will not be reused", name, e)
        return None


def _index(cfg: DictConfig, name: str, key: str) -> Path:
    return Path(cfg.stage_reuse.index) / f"{name}-{key}.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _done(stage_dir: Path) -> dict:
    return _read_json(stage_dir / DONE_FILE)


def record(cfg: DictConfig, name: str, stage_dir: Path, mlflow_run_id: str | None) -> None:
    """Rank 0, after a stage finished (its ``stage_done.json`` written, with its key): remember where it is."""
    key = _done(stage_dir).get(KEY_FIELD)
    if not cfg.get("stage_reuse") or not key or (stage_dir / REUSED_FILE).exists():
        return  # a reused stage points at its origin, never at a chain of copies
    path = _index(cfg, name, key)
    write_json_atomic({"stage_dir": str(stage_dir.resolve()), "mlflow_run_id": mlflow_run_id,
                       "tracking_uri": cfg.logger.tracking_uri, "finished": time.time()}, path)


def reuse(cfg: DictConfig, name: str, stage_dir: Path) -> dict | None:
    """Place an earlier finished stage with the same key into ``stage_dir``; its record, or None (train it).
    Idempotent: a stage folder this run already filled (another rank, an earlier start) is returned as it is."""
    if not (cfg.get("stage_reuse") or {}).get("enabled"):
        return None
    key = finished_key(cfg, name)
    if key is None:
        return None
    mine = _read_json(stage_dir / REUSED_FILE)
    if mine.get("key") == key and _done(stage_dir).get(KEY_FIELD) == key:
        return mine
    entry = _read_json(_index(cfg, name, key))
    if not entry.get("stage_dir"):
        return None
    source = Path(entry["stage_dir"])
    if _done(source).get(KEY_FIELD) != key or not (source / "last.ckpt").exists():
        log.warning("stage %s: the stage recorded for its key (%s) is gone, unfinished or was started again; "
                    "training it", name, source)
        return None
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        for f in PLACED:  # stage_done.json last
            if (source / f).exists():
                place(source, f, stage_dir / f)
    except (OSError, UnsafePathError) as e:
        log.warning("stage %s: could not take the finished stage in %s (%s); training it", name, source, e)
        return None
    info = {"source_dir": str(source), "mlflow_run_id": entry.get("mlflow_run_id"),
            "tracking_uri": entry.get("tracking_uri"), "key": key}
    write_json_atomic(info, stage_dir / REUSED_FILE)
    log.info("stage %s: same inputs as the finished stage in %s (MLflow run %s) — reused, not trained again "
             "(stage_reuse.enabled=false trains it)", name, source, entry.get("mlflow_run_id"))
    return info


def place(source: Path, name: str, dst: Path) -> None:
    """``source/name`` (a file or a folder) at ``dst`` as hard links of its files — a copy where linking fails
    (another file system) — never a symlink; files inside ``source`` only (:func:`lmm.common.inside`). Built under
    a temporary name, then renamed: racing ranks leave one complete copy."""
    src = inside(source, name)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    _remove(tmp)
    if src.is_dir():
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src)
            target = inside(source, str(Path(name) / rel))  # a link inside the folder must stay inside it
            if target.is_file():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(target, tmp / rel)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, dst)
        except OSError as e:  # another rank placed it first
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _remove(tmp)
    else:
        _link_or_copy(src, tmp)
        os.replace(tmp, dst)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # EXDEV (another file system), EPERM (no hard links there), ...
        shutil.copy2(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def reuse_tags(reused: dict[str, dict]) -> dict[str, str]:
    """MLflow tags of the later stages' runs: where each reused stage came from."""
    tags = {}
    for name, info in reused.items():
        tags[f"reused.{name}.run_id"] = str(info.get("mlflow_run_id"))
        tags[f"reused.{name}.dir"] = info["source_dir"]
    return tags
