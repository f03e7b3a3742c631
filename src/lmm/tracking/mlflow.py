"""MLflow: a logger per stage (sqlite store by default), provenance tags, the resolved config as params + YAML."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def git_sha(path: str | Path | None = None) -> str:
    path = Path(path or Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and d and all(isinstance(x, dict) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def ensure_store(tracking_uri: str, experiment_name: str) -> str:
    """Create the store's schema and the experiment once, whoever comes first: jobs started together (a parallel
    sweep) would otherwise race MLflow's sqlite migrations ("table _alembic_tmp_... already exists") or both create
    the experiment. A sqlite store is prepared under a lock beside it; a server settles the race itself. Returns the
    experiment id."""
    import mlflow
    from mlflow import MlflowClient

    from lmm.common import file_lock

    def prepare() -> str:
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(experiment_name)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another job
            return client.get_experiment_by_name(experiment_name).experiment_id

    if tracking_uri.startswith("sqlite:///"):
        with file_lock(tracking_uri[len("sqlite:///"):] + ".lock"):
            return prepare()
    return prepare()


def run_label(tags: dict, default: str = "train") -> str:
    """What a run is called in MLflow: its experiment (``row7_gqa``), with the swept value in a sweep
    (``llava_v1_5_7b[data.finetune.subsample=0.3]``); stages and evaluations add ``-<stage>`` / ``-eval``."""
    label = str(tags.get("experiment") or default)
    if tags.get("sweep.key"):
        label += f"[{tags['sweep.key']}={tags.get('sweep.value')}]"
    return label


def twins_tag(model) -> dict[str, str]:
    """``{"twins": kind}`` for a model config (``cfg.model`` or a model folder's ``model`` spec) built from tiny
    twins (``model.twin``), else ``{}``: ``pretrained`` when both backbones are pretrained twins
    (``twins=pretrained``: ``model.vision.twin.pretrain`` / ``model.llm.twin.pretrain`` set), ``random`` when
    neither is (``twins=random``), ``pretrained-vision`` / ``pretrained-llm`` when only that one is."""
    if not model or not model.get("twin"):
        return {}
    pretrained = [part for part in ("vision", "llm")
                  if ((model.get(part) or {}).get("twin") or {}).get("pretrain")]
    kind = {0: "random", 2: "pretrained"}.get(len(pretrained)) or f"pretrained-{pretrained[0]}"
    return {"twins": kind}


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether ``run_id`` is a live run of the store (a checkpoint from another run folder names a foreign run)."""
    import mlflow

    try:
        return mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


def reopen(logger) -> None:
    """Mark a continued run as running again (an interrupted run was left RUNNING, a pre-empted one KILLED)."""
    if logger.run_id:
        logger.experiment.update_run(logger.run_id, status="RUNNING")


def set_tags(logger, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        logger.experiment.set_tag(logger.run_id, k, str(v))


def log_config(logger, config: dict, yaml_path: Path) -> None:
    """The resolved config as flat params and as a YAML artifact."""
    logger.log_hyperparams({k: ("" if v is None else v) for k, v in flatten(config).items()})
    logger.experiment.log_artifact(logger.run_id, str(yaml_path))


def log_artifact(logger, path: Path, artifact_path: str | None = None) -> None:
    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def log_text(logger, text: str, name: str) -> None:
    logger.experiment.log_text(logger.run_id, text, name)


def log_metrics(logger, metrics: dict[str, float], step: int | None = None) -> None:
    logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
