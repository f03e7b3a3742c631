"""Copy the runs of older per-run stores (``outputs/*/mlflow.db``, ``multirun/*/mlflow.db``) into the project's one
store, so that the MLflow UI compares them side by side.

    python -m lmm.tracking.merge [SRC ...] [--into sqlite:///mlflow.db]

Sources default to every ``outputs/*/mlflow.db`` and ``multirun/*/mlflow.db`` under the current folder. Each run is
copied with its name, status, times, params, tags, every metric value (whole history, steps and timestamps) and its
artifacts; parent/child links (an evaluation under its training run) are re-pointed at the copies. A copy is tagged
``lmm.merging_from = <source URI>#<run id>`` while it is written and ``lmm.merged_from`` only once it is complete
(params, metrics, artifacts, status), so merging again copies nothing twice, and a copy an interrupted merge left
half-done (a failed artifact download, a killed process) is deleted and copied again by the next merge.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from lmm.tracking.runs import search_all, store_uri

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
log = logging.getLogger(__name__)

MERGED_FROM = "lmm.merged_from"  # on a complete copy
MERGING = "lmm.merging_from"  # on a copy being written (left on a half copy by an interrupted merge)
PARENT = "mlflow.parentRunId"
SYSTEM_TAGS = ("mlflow.runName", PARENT, MERGED_FROM, MERGING)  # set here / re-pointed, never copied as they are


class MergeError(RuntimeError):
    """A run could not be copied; its half copy is replaced by the next merge."""


def _copy_run(src, dst, run, experiment_id: str, origin: str, parent: str | None) -> str:
    from mlflow.entities import Metric, Param

    tags = {k: v for k, v in run.data.tags.items() if k not in SYSTEM_TAGS}
    tags[MERGING] = origin
    if parent:
        tags[PARENT] = parent
    new = dst.create_run(experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name)
    rid = new.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
               for m in src.get_metric_history(run.info.run_id, key)]
    for i in range(0, len(params), 100):  # log_batch takes at most 100 params / 1000 metrics a call
        dst.log_batch(rid, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        dst.log_batch(rid, metrics=metrics[i:i + 1000])
    if src.list_artifacts(run.info.run_id):
        with tempfile.TemporaryDirectory() as tmp:
            local = src.download_artifacts(run.info.run_id, "", tmp)
            dst.log_artifacts(rid, local)
    dst.set_terminated(rid, status=run.info.status, end_time=run.info.end_time)
    dst.set_tag(rid, MERGED_FROM, origin)  # complete: from now on the copy counts as merged
    dst.delete_tag(rid, MERGING)
    return rid


def _copy_or_explain(src, dst, run, experiment_id: str, origin: str, parent: str | None) -> str:
    try:
        return _copy_run(src, dst, run, experiment_id, origin, parent)
    except Exception as e:  # anything MLflow or the artifact store raises: say which run, and what happens next
        raise MergeError(
            f"copying run {run.info.run_id} ({run.info.run_name}) of {origin.rpartition('#')[0]} failed: "
            f"{type(e).__name__}: {e}. Its half copy is tagged {MERGING} (never {MERGED_FROM}); merging again "
            "deletes it and copies the run again") from e


def merge(sources: list[str], into: str, echo=print) -> dict[str, int]:
    """Copy every run of every experiment of ``sources`` into the store ``into`` (same experiment names). Returns
    the counts: runs ``copied``, ``already`` there, half copies of an interrupted merge ``redone``, ``stores``. A
    run that cannot be copied stops the merge with a :class:`MergeError`."""
    from mlflow import MlflowClient

    dst = MlflowClient(tracking_uri=into)
    counts = {"copied": 0, "already": 0, "redone": 0, "stores": 0}
    for uri in sources:
        if uri == into:
            continue
        src = MlflowClient(tracking_uri=uri)
        counts["stores"] += 1
        for exp in src.search_experiments():
            target = dst.get_experiment_by_name(exp.name)
            exp_id = target.experiment_id if target else dst.create_experiment(exp.name)
            runs = sorted(search_all(src, exp.experiment_id), key=lambda r: PARENT in r.data.tags)  # parents first
            origins = {f"{uri}#{run.info.run_id}" for run in runs}
            done = {}
            for r in search_all(dst, exp_id):
                if MERGED_FROM in r.data.tags:
                    done[r.data.tags[MERGED_FROM]] = r.info.run_id
                elif r.data.tags.get(MERGING) in origins:  # left half-copied by an interrupted merge
                    dst.delete_run(r.info.run_id)
                    counts["redone"] += 1
            copies: dict[str, str] = {}
            for run in runs:
                origin = f"{uri}#{run.info.run_id}"
                if origin in done:
                    copies[run.info.run_id] = done[origin]
                    counts["already"] += 1
                    continue
                parent = run.data.tags.get(PARENT)
                copies[run.info.run_id] = _copy_or_explain(src, dst, run, exp_id, origin, copies.get(parent, parent))
                counts["copied"] += 1
    echo(f"merged {counts['stores']} store(s) into {into}: {counts['copied']} run(s) copied, "
         f"{counts['already']} already there, {counts['redone']} half copies of an interrupted merge replaced")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmm.tracking.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="*", help="mlflow.db files or tracking URIs (default: outputs/*/mlflow.db, "
                                              "multirun/*/mlflow.db)")
    p.add_argument("--into", default=os.environ.get("MLFLOW_TRACKING_URI") or "mlflow.db",
                   help="the target store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    a = p.parse_args(argv)
    sources = a.sources or sorted(str(f) for pattern in ("outputs/*/mlflow.db", "multirun/*/mlflow.db")
                                  for f in Path(".").glob(pattern))
    if not sources:
        print("nothing to merge: no outputs/*/mlflow.db or multirun/*/mlflow.db here", file=sys.stderr)
        return 2
    try:
        merge([store_uri(s) for s in sources], store_uri(a.into))
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
