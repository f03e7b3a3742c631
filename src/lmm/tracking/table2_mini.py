"""Table 2 in miniature: the report of a sweep of rows 0–9 × seeds (+ the calibration row re-run with another
training draw): per row transition and benchmark, the paired per-question Δ with a 95 % hierarchical-bootstrap
interval beside the paper's Δ, a verdict against the paper's claim and a check of our prediction.

    python -m lmm.tracking.table2_mini <sweep folder> [--study experiments/table2_mini.yaml]
                                       [--out outputs/table2_mini] [--no-mlflow]

Inputs are files only: each job folder's ``.hydra/config.yaml`` and ``eval/<bench>/per_question.json`` (see
:mod:`lmm.tracking.table2_jobs`), the study file (:mod:`lmm.tracking.table2_study`) and the paper's numbers
(``experiments/paper_results.yaml``). Outputs: ``report.md``, ``cells.csv``, ``chart.png`` in ``--out`` and an
MLflow run in experiment ``table2_mini`` of the project's store. Exit codes: 0 report written; 2 no job with eval
results under the folder, or an unreadable study / paper file (one line on stderr). docs/table2_mini.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lmm.tracking import charts
from lmm.tracking.paper import load_paper_results
from lmm.tracking.table2_analysis import Analysis, Table2Error, analyse
from lmm.tracking.table2_report import cells_csv, chart_panels, render_report
from lmm.tracking.table2_study import StudyError, load_study

__all__ = ["EXPERIMENT", "analyse", "log_to_mlflow", "main", "write_outputs"]
EXPERIMENT = "table2_mini"


def write_outputs(analysis: Analysis, out_dir: str | Path) -> dict[str, Path]:
    """``report.md``, ``cells.csv`` and ``chart.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report.md": out_dir / "report.md", "cells.csv": out_dir / "cells.csv"}
    paths["report.md"].write_text(render_report(analysis, chart="chart.png"))
    paths["cells.csv"].write_text(cells_csv(analysis))
    paths["chart.png"] = charts.delta_chart(chart_panels(analysis), out_dir / "chart.png",
                                            "Table 2 in miniature: Δ per transition (95 % interval), twins")
    return paths


def log_to_mlflow(analysis: Analysis, paths: dict[str, Path], tracking_uri: str) -> str:
    """One run in experiment ``table2_mini``: ``delta/<to-row>/<bench>``, ``ci_low/…``, ``ci_high/…`` (the
    calibration as ``…/calibration/<bench>``), the three files as artifacts, seeds and rows as tags."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from lmm.tracking.mlflow import ensure_store, git_sha

    exp_id = ensure_store(tracking_uri, EXPERIMENT)
    client = MlflowClient(tracking_uri=tracking_uri)
    tags = {"seeds": ",".join(map(str, analysis.seeds)), "rows": ",".join(analysis.study.rows),
            "calibration": analysis.calibration_row, "sweep_folder": str(analysis.sweep.resolve()),
            "study": str(analysis.study.path), "git_sha": git_sha(), "jobs": str(len(analysis.jobs)),
            "jobs_with_results": str(len(analysis.usable()))}
    run = client.create_run(exp_id, run_name=EXPERIMENT, tags=tags)
    now = int(time.time() * 1000)
    metrics = []
    for cell in analysis.cells + analysis.calibration:
        iv = cell.interval
        if iv is not None:
            metrics += [Metric(f"{name}/{cell.metric_key}", value, now, 0)
                        for name, value in (("delta", iv.point), ("ci_low", iv.low), ("ci_high", iv.high))]
    for i in range(0, len(metrics), 500):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 500])
    for path in paths.values():
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmm.tracking.table2_mini", description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="the sweep folder (one job folder per row and seed, e.g. outputs/table2_mini/runs)")
    ap.add_argument("--study", default=None, help="study file (default: experiments/table2_mini.yaml)")
    ap.add_argument("--paper", default=None, help="paper numbers (default: experiments/paper_results.yaml)")
    ap.add_argument("--out", default="outputs/table2_mini", help="output folder (default: outputs/table2_mini)")
    ap.add_argument("--no-mlflow", action="store_true", help="write the files only")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default: $MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    args = ap.parse_args(argv)
    try:
        if not Path(args.sweep).is_dir():
            raise Table2Error(f"sweep folder not found: {args.sweep}")
        study = load_study(args.study)
        analysis = analyse(args.sweep, study, load_paper_results(args.paper))
    except (Table2Error, StudyError, FileNotFoundError, ValueError) as e:
        print("table2_mini: " + " ".join(str(e).split()), file=sys.stderr)   # one line
        return 2
    paths = write_outputs(analysis, args.out)
    bad, n = analysis.calibration_summary()
    print(f"table2_mini: {len(analysis.usable())} of {len(analysis.jobs)} jobs with results, seeds "
          f"{analysis.seeds}; {len(analysis.cells)} cells; calibration {bad}/{n} cells exclude 0; "
          f"{len(analysis.missing)} missing")
    for path in paths.values():
        print(f"wrote {path}")
    if not args.no_mlflow:
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") \
            or f"sqlite:///{Path('mlflow.db').resolve()}"
        print(f"mlflow: run {log_to_mlflow(analysis, paths, uri)} in experiment {EXPERIMENT} of {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
