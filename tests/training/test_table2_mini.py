"""Smoke of `make table2-mini` (docs/table2_mini.md): the README's target with 1 seed, 3 rows and the calibration
run, at a smaller scale than the full study. It checks the report's structure and the study's plumbing — stage-1
reuse across rows, per-question files, the calibration pairing — not its science (1 seed, small benchmarks)."""

import csv
import os
import re
import subprocess

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.long]
ROWS = ["row0_llava", "row1_vqav2", "row2_format_prompt"]
BENCHES = ["vqav2", "gqa", "pope", "textvqa", "mme", "mmvet"]
SMALL = ["data.twin.n_pretrain=256", "data.twin.n_finetune=1500", "eval.synthetic_benchmarks.n_images=16",
         "~eval.synthetic_benchmarks.per_benchmark"]


def test_table2_mini_smoke(tmp_path):
    out, runs = tmp_path / "report", tmp_path / "runs"
    env = {**os.environ, "LMM_STAGE_REUSE": "true", "PY": str(REPO / ".venv" / "bin" / "python")}
    res = subprocess.run(
        ["make", "-s", "table2-mini", "SEEDS=1", f"T2M_ROWS={','.join(ROWS)}", "T2M_CALIBRATION=row2_format_prompt",
         f"T2M_OUT={out}", f"T2M_RUNS={runs}", f"ARGS={' '.join(SMALL)}", f"PY={env['PY']}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "failed" not in res.stdout, res.stdout[-3000:]

    # every row and the calibration ran in its own sweep folder and wrote the per-question files the report pairs
    for row in [*ROWS, "calibration"]:
        jobs = [p.parent.parent for p in (runs / row).glob("*/.hydra/config.yaml")]
        assert len(jobs) == 1, (row, jobs)
        for bench in BENCHES:
            assert (jobs[0] / "eval" / bench / "per_question.json").is_file(), (row, bench)
    # rows 1 and 2 share row 0's stage 1 (same tower, connector, LLM and seed): linked, not retrained
    for row in ROWS[1:]:
        assert list((runs / row).glob("*/pretrain/reused_from.json")), row
    assert not list((runs / "calibration").glob("*/pretrain/reused_from.json"))  # another training draw

    report = (out / "report.md").read_text()
    for row in ROWS[1:]:
        assert row in report
    with open(out / "cells.csv") as f:
        cells = list(csv.DictReader(f))
    pairs = {(c["to"], c["benchmark"]) for c in cells}
    assert pairs >= {(row, b) for row in ROWS[1:] for b in BENCHES}, sorted(pairs)
    verdicts = {c["verdict"] for c in cells}
    assert verdicts <= {"reproduced", "contradicted", "unresolved", "no claim", "no data"}, verdicts
    assert re.search(r"calibration", report, re.I)
    assert (out / "chart.png").stat().st_size > 1000
