"""Smoke of `make table2-mini` (docs/table2_mini.md): the README's target with 1 seed, 3 rows and the calibration
run, at a smaller scale than the full study. It checks the report's structure and the study's plumbing — stage-1
reuse across rows, per-question files, the calibration pairing — not its science (1 seed, small benchmarks)."""

import csv
import os
import re
import subprocess

import pytest
import yaml
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
        ["make", "-s", "table2-mini", "SEEDS=1", "JOBS=1", f"T2M_ROWS={','.join(ROWS)}", "T2M_CALIBRATION=row2_format_prompt",
         f"T2M_OUT={out}", f"T2M_RUNS={runs}", f"PY={env['PY']}",
         f"ARGS={' '.join(SMALL)} stage_reuse.index={tmp_path / 'stage_index'}"],  # reuse within this run only
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "failed" not in res.stdout, res.stdout[-3000:]

    # every row and the calibration (row 2 again, training_seed_offset 100) ran once, with the per-question files
    # the report pairs (rows in runs/rows/<n>, the calibration in runs/calibration/<n>)
    jobs: dict[tuple, list] = {}
    for config in runs.glob("*/*/.hydra/config.yaml"):
        cfg = yaml.safe_load(config.read_text())
        key = (cfg["logger"]["tags"]["experiment"], cfg.get("training_seed_offset", 0))
        jobs.setdefault(key, []).append(config.parent.parent)
    assert sorted(jobs) == sorted([(row, 0) for row in ROWS] + [("row2_format_prompt", 100)]), sorted(jobs)
    for key, folders in jobs.items():
        assert len(folders) == 1, (key, folders)
        for bench in BENCHES:
            assert (folders[0] / "eval" / bench / "per_question.json").is_file(), (key, bench)
    # rows 1 and 2 share row 0's stage 1 (same tower, connector, LLM and seed; JOBS=1 runs them in row order):
    # linked, not retrained; the calibration is another training draw, so it trains its own
    for row in ROWS[1:]:
        assert (jobs[(row, 0)][0] / "pretrain" / "reused_from.json").is_file(), row
    assert not (jobs[("row2_format_prompt", 100)][0] / "pretrain" / "reused_from.json").exists()

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
