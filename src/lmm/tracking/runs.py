"""Read the runs of ``train.py`` / ``eval.py`` back from one or more MLflow stores into pandas tables.

What is read (written by lmm.training.run and lmm.evaluation.run): experiment ``lmm``; training runs,
one per stage, tagged ``stage``, ``experiment``, ``paper_table``, ``paper_row``, ``run_group``, ``git_sha``
and, in sweeps, ``sweep`` / ``sweep.key`` / ``sweep.value``, with the resolved config as params
(``model.twin``, ``seed``, …) and, for a twin model, ``twins`` (``pretrained`` / ``random`` /
``pretrained-vision`` / ``pretrained-llm``: which backbones were pretrained twins); evaluation runs tagged ``kind=eval`` with the same experiment / sweep tags,
``mlflow.parentRunId`` = the finetune run, ``benchmark_data`` (``synthetic`` / ``real`` / ``mixed``: whether the
benchmark files were the synthetic twins) and ``split.<bench>`` (VQAv2 / VizWiz: val, test-dev, test), and metrics
``eval/<bench>/score`` (headline, paper units) plus ``eval/<bench>/<sub-score>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("mlflow.db", "outputs/*/mlflow.db", "multirun/*/mlflow.db")  # the project store first
UNTAGGED = "(untagged)"
RUN_COLUMNS = ["run_id", "tracking_uri", "run_name", "status", "start_time", "kind", "stage", "experiment",
               "paper_table", "paper_row", "sweep", "sweep_key", "sweep_value", "run_group", "git_sha",
               "twin", "twins", "seed", "parent_run_id", "splits", "synthetic_data"]
SCORE_COLUMNS = ["run_id", "benchmark", "metric", "value"]


class NoRunsError(RuntimeError):
    """Nothing to compare: no store, or no run in the stores."""


@dataclass
class Runs:
    """``runs``: one row per MLflow run (columns RUN_COLUMNS); ``scores``: one row per
    ``eval/<bench>/<metric>`` value of every run (columns SCORE_COLUMNS); ``stores``: the tracking URIs read;
    ``problems``: the stores that could not be read, and why."""

    runs: pd.DataFrame
    scores: pd.DataFrame
    stores: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def eval_runs(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == "eval"]


def discover_stores(root: str | Path = ".", patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[str]:
    """sqlite tracking URIs of every ``mlflow.db`` the glob patterns find under ``root``."""
    root = Path(root)
    found = sorted({p.resolve() for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    return [f"sqlite:///{p}" for p in found]


def _truthy(value) -> bool | None:
    if value is None or value == "":
        return None
    return str(value).strip().lower() in {"true", "1", "yes"}


def _twin_from_checkpoint(checkpoint: str | None) -> bool | None:
    """``model.twin`` of an evaluated model folder's ``lmm_model.yaml`` (when it is still on disk)."""
    if not checkpoint:
        return None
    spec_file = Path(checkpoint) / "lmm_model.yaml"
    try:
        spec = yaml.safe_load(spec_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return _truthy((spec.get("model") or {}).get("twin"))


def _synthetic_data(tags: dict, params: dict) -> bool | None:
    """Whether an evaluation scored the synthetic twins of the benchmarks: its ``benchmark_data`` tag (anything but
    ``real``), else (runs from before the tag) its ``synthetic_benchmarks`` param, else a ``data_root`` under a
    ``synthetic`` folder (the twins' cache, ``$LMM_CACHE/synthetic/eval``); None when the run does not say."""
    recorded = tags.get("benchmark_data")
    if recorded:
        return recorded != "real"
    if params.get("synthetic_benchmarks") not in (None, "", "null", "None"):
        return True
    root = params.get("data_root")
    return "synthetic" in Path(root).parts if root else None


def store_uri(path_or_uri: str) -> str:
    """A tracking URI as it is, or an ``mlflow.db`` path as its sqlite URI."""
    return path_or_uri if "://" in path_or_uri else f"sqlite:///{Path(path_or_uri).resolve()}"


def search_all(client, experiment_id: str) -> list:
    """Every run of one experiment (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _score_rows(run_id: str, metrics: dict[str, float]) -> Iterable[tuple]:
    for key, value in metrics.items():
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == "eval":
            yield run_id, parts[1], parts[2], float(value)


def collect_runs(tracking_uris: Sequence[str], experiment_name: str = "lmm") -> Runs:
    """Every run of ``experiment_name`` in each store (a run found in two stores is kept once)."""
    if not tracking_uris:
        raise NoRunsError("no MLflow store to read (no tracking URI given and no mlflow.db found)")
    from mlflow import MlflowClient

    records: dict[str, dict] = {}
    scores: list[tuple] = []
    problems: list[str] = []
    for uri in tracking_uris:
        try:
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(experiment_name)
            found = [] if exp is None else search_all(client, exp.experiment_id)
        except Exception as e:  # a broken or unreachable store must not hide the others
            problems.append(f"{uri}: {type(e).__name__}: {e}")
            log.warning("skipping %s: %s", uri, e)
            continue
        for run in found:
            rid = run.info.run_id
            if rid in records:
                continue
            tags, params = run.data.tags, run.data.params
            kind = tags.get("kind") or ("train" if tags.get("stage") else "other")
            twin = _truthy(tags.get("model.twin", params.get("model.twin")))
            if twin is None and kind == "eval":
                twin = _twin_from_checkpoint(params.get("checkpoint") or tags.get("checkpoint"))
            records[rid] = {
                "run_id": rid, "tracking_uri": uri, "run_name": run.info.run_name, "status": run.info.status,
                "start_time": pd.to_datetime(run.info.start_time, unit="ms"), "kind": kind,
                "stage": tags.get("stage"), "experiment": tags.get("experiment") or UNTAGGED,
                "paper_table": tags.get("paper_table"), "paper_row": tags.get("paper_row"),
                "sweep": tags.get("sweep"), "sweep_key": tags.get("sweep.key"),
                "sweep_value": tags.get("sweep.value"), "run_group": tags.get("run_group"),
                "git_sha": tags.get("git_sha"), "twin": twin, "twins": tags.get("twins"), "seed": params.get("seed"),
                "parent_run_id": tags.get("mlflow.parentRunId"), "merged_from": tags.get("lmm.merged_from"),
                "splits": {k[6:]: v for k, v in tags.items() if k.startswith("split.")},
                "synthetic_data": bool(_synthetic_data(tags, params)) if kind == "eval" else False,
            }
            scores.extend(_score_rows(rid, run.data.metrics))
    if not records:
        why = "".join(f"\n  unreadable: {p}" for p in problems)
        raise NoRunsError(f"no runs of experiment {experiment_name!r} in: {', '.join(tracking_uris)}{why}")
    # a run merged into the project store (lmm.tracking.merge) and still in its old store counts once: the copy
    originals = {rec["merged_from"].rsplit("#", 1)[-1] for rec in records.values() if rec["merged_from"]}
    records = {rid: rec for rid, rec in records.items() if rid not in originals}
    # An evaluation inherits what it does not say itself (twin flag and kind, seed) from the training run it evaluates.
    for rec in records.values():
        parent = records.get(rec["parent_run_id"] or "")
        for col in ("twin", "twins", "seed"):
            if rec[col] is None and parent is not None:
                rec[col] = parent[col]
        rec["twin"] = bool(rec["twin"])
    runs = pd.DataFrame([{c: rec[c] for c in RUN_COLUMNS} for rec in records.values()], columns=RUN_COLUMNS)
    return Runs(runs=runs, scores=pd.DataFrame(scores, columns=SCORE_COLUMNS), stores=list(tracking_uris),
                problems=problems)


def headline_scores(runs: Runs, latest: bool = False) -> pd.DataFrame:
    """One row per (evaluation run, benchmark) headline score, with the run's experiment / sweep / twin flag and
    the benchmark's ``split`` (None where the run does not name one).

    ``twin`` here is whether the score comes from twins, so that it cannot stand beside the paper's: a tiny twin
    model (``model_twin``) or the synthetic twins of the benchmarks (``synthetic_data``). Training runs also carry
    ``eval/<bench>/score`` (copied there by eval.py); only evaluation runs count, so no score is counted twice.
    ``latest``: keep only the newest evaluation of each experiment (and sweep value).
    """
    ev = runs.eval_runs.rename(columns={"twin": "model_twin"})
    ev = ev.assign(synthetic_data=ev["synthetic_data"].fillna(False).astype(bool))
    ev = ev.assign(twin=ev["model_twin"].astype(bool) | ev["synthetic_data"])
    cols = ["run_id", "experiment", "twin", "model_twin", "twins", "synthetic_data", "sweep", "sweep_value", "seed",
            "start_time", "run_group", "splits"]
    sc = runs.scores[runs.scores["metric"] == "score"][["run_id", "benchmark", "value"]]
    out = sc.merge(ev[cols], on="run_id").rename(columns={"value": "score"})
    split = [s.get(b) if isinstance(s, dict) else None for s, b in zip(out["splits"], out["benchmark"])]
    out = out.drop(columns="splits").assign(split=pd.Series(split, index=out.index, dtype=object))
    if latest and not out.empty:
        keys = ["experiment", "twin", "sweep", "sweep_value", "benchmark"]
        out = (out.sort_values("start_time").groupby(keys, dropna=False, sort=False).tail(1)
               .reset_index(drop=True))
    return out


def summarize(scores: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof 1; NaN for one run) and count of ``score`` per ``keys``."""
    if scores.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n"])
    g = scores.groupby(list(keys), dropna=False)["score"]
    return g.agg(mean="mean", std="std", n="count").reset_index()
