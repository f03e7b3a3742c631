"""Table 2 in miniature, the report (issue 23): job folders of a sweep (`.hydra/config.yaml`,
`eval/<bench>/{scores,per_question}.json`) turned into paired per-question Δs with hierarchical-bootstrap intervals,
verdicts against the paper's claims, our predictions checked, report.md / cells.csv / chart.png and an MLflow run.

The sweep below is built with known per-question scores: within a seed every row answers the same 300 questions of
each benchmark with the same base scores, except where an effect is planted (exactly ±20 points per seed)."""

import csv
import json

import numpy as np
import pytest
from conftest import REPO

from lmm.tracking.bootstrap import hierarchical_bootstrap, paired_differences
from lmm.tracking.paper import load_paper_results
from lmm.tracking.table2_mini import analyse, main, write_outputs
from lmm.tracking.table2_study import StudyError, load_study

STUDY = REPO / "tests" / "fixtures" / "table2_mini_study.yaml"
BENCHES = ["vqav2", "gqa", "pope", "textvqa", "mme", "mmvet"]
LABELS = {"vqav2": "VQAv2", "gqa": "GQA", "pope": "POPE", "textvqa": "TextVQA", "mme": "MME-P", "mmvet": "MM-Vet"}
SEEDS = (1, 2, 3)
N = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _base(seed: int, bench: str) -> np.ndarray:
    return np.random.default_rng([seed, BENCHES.index(bench)]).integers(0, 2, N).astype(float)


def _shift(scores: np.ndarray, points: int) -> np.ndarray:
    """The same answers with ``points`` % of the questions flipped (wrong → right for +, right → wrong for −)."""
    out = scores.copy()
    flip = np.flatnonzero(out == (0.0 if points > 0 else 1.0))[: abs(points) * N // 100]
    out[flip] = 1.0 if points > 0 else 0.0
    return out


def write_job(sweep, num, row, seed, scores=None, offset=0, log_s=None):
    """One Hydra job folder as train.py leaves it; ``scores`` = {bench: per-question array} (None: a failed job)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    twin = {"twin": {"pretrain": {"steps": 10}}}
    cfg = {"seed": seed, "logger": {"tags": {"experiment": row, "paper_row": row[3]}},
           "model": {"twin": True, "vision": twin, "llm": twin}}
    if offset:
        cfg["training_seed_offset"] = offset
    import yaml
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if log_s is not None:
        (job / "train.log").write_text(f"[2026-12-05 10:00:00,000][lmm][INFO] - start\n"
                                       f"[2026-12-05 10:00:{log_s:02d},500][lmm][INFO] - done\n")
    for bench, values in (scores or {}).items():
        folder = job / "eval" / bench
        folder.mkdir(parents=True)
        per_q = {f"q{i:03d}": float(v) for i, v in enumerate(values) if not np.isnan(v)}
        (folder / "per_question.json").write_text(json.dumps({"benchmark": bench, "unit": "exact match",
                                                              "scores": per_q}))
        (folder / "scores.json").write_text(json.dumps({"score": 100 * float(np.nanmean(values))}))
    return job


def row_scores(row, seed, offset=0):
    out = {b: _base(seed, b) for b in BENCHES}
    if row == "row1_vqav2":          # +20 on VQAv2 (a paper_claims cell) and MME (a Table-2 cell, paper +387.4)
        out["vqav2"], out["mme"] = _shift(out["vqav2"], 20), _shift(out["mme"], 20)
    if row == "row4_okvqa_ocr":      # a reversal: GQA −20 where Table 2 says +2.7
        out["gqa"] = _shift(out["gqa"], -20)
    if row == "row8_sharegpt" and seed == 3:   # 10 questions of GQA not answered
        out["gqa"] = out["gqa"].copy()
        out["gqa"][:10] = np.nan
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("table2_mini") / "runs"
    num = 0
    for seed in SEEDS:
        for row in ("row0_llava", "row1_vqav2", "row3_mlp_connector", "row4_okvqa_ocr", "row7_gqa",
                    "row8_sharegpt"):
            write_job(root, num, row, seed, row_scores(row, seed), log_s=30 if num < 2 else None)
            num += 1
        write_job(root, num, "row7_gqa", seed, row_scores("row7_gqa", seed), offset=100)   # identical: Δ 0
        num += 1
    write_job(root, num, "row2_format_prompt", 1)   # failed: no eval results
    return root


@pytest.fixture(scope="module")
def result(sweep):
    return analyse(sweep, load_study(STUDY), load_paper_results(REPO / "experiments" / "paper_results.yaml"))


def _cell(result, to, bench):
    (cell,) = [c for c in result.cells if c.to == to and c.bench == bench]
    return cell


def test_a_planted_effect_is_reproduced_with_an_interval_excluding_zero(result):
    mme = _cell(result, "row1_vqav2", "mme")
    assert mme.interval.point == pytest.approx(20.0)
    assert 10 < mme.interval.low < 20 < mme.interval.high < 30
    assert mme.paper_delta == pytest.approx(1197.0 - 809.6)
    assert mme.claim == "up" and mme.verdict == "reproduced" and mme.check == "as predicted"
    vqa = _cell(result, "row1_vqav2", "vqav2")   # a claim of paper_claims (no VQAv2 column in Table 2)
    assert vqa.paper_delta is None and vqa.claim == "up" and vqa.verdict == "reproduced"
    assert "no VQAv2 column" in vqa.claim_text
    gqa = _cell(result, "row1_vqav2", "gqa")     # row 0's GQA is '–' in Table 2; predicted up, measured 0
    assert gqa.claim is None and gqa.verdict == "no claim" and "row0_llava" in gqa.claim_text
    assert gqa.interval.point == 0 and gqa.check == "not as predicted"
    assert mme.interval.n_seeds == 3 and mme.interval.n_questions == (N, N, N)


def test_identical_runs_give_zero_and_the_calibration_reports_no_cell_excluding_zero(result):
    for bench in BENCHES:
        cell = _cell(result, "row8_sharegpt", bench)
        assert cell.interval.point == 0 and cell.interval.low <= 0 <= cell.interval.high
        assert cell.check == "as predicted"      # all predicted null
    assert _cell(result, "row8_sharegpt", "gqa").interval.n_questions == (N, N, N - 10)   # the intersection
    assert [c.bench for c in result.calibration] == BENCHES
    assert all(c.interval.point == 0 and c.interval.n_seeds == 3 for c in result.calibration)
    assert result.calibration_summary() == (0, 6)


def test_a_planted_reversal_is_contradicted(result):
    cell = _cell(result, "row4_okvqa_ocr", "gqa")
    assert cell.paper_delta == pytest.approx(50.0 - 47.3)
    assert cell.interval.point == pytest.approx(-20.0) and cell.interval.high < 0
    assert cell.verdict == "contradicted" and cell.check == "not as predicted"   # predicted null


def test_a_paper_delta_within_its_noise_band_is_no_claim(result):
    gqa = _cell(result, "row8_sharegpt", "gqa")       # Table 2: 62.0 → 62.0, band ±0.5
    assert gqa.claim is None and gqa.verdict == "no claim"
    assert gqa.claim_text == "no claim — paper Δ +0.0 within its ±0.5 noise"
    mmvet = _cell(result, "row8_sharegpt", "mmvet")   # 30.7 → 31.1, band ±1
    assert mmvet.verdict == "no claim" and "within its ±1 noise" in mmvet.claim_text
    mme = _cell(result, "row8_sharegpt", "mme")       # +41.5 beyond ±20: a claim, measured 0
    assert mme.claim == "up" and mme.verdict == "unresolved"
    pope = _cell(result, "row8_sharegpt", "pope")
    assert pope.verdict == "no claim" and pope.claim_text == "no claim — not in Table 2"
    no_data = _cell(result, "row2_format_prompt", "mme")   # row 2 failed: the cell is still there
    assert no_data.interval is None and no_data.verdict == "no data" and no_data.claim == "up"


def test_the_interval_narrows_with_more_questions():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 800):
        diffs = [rng.integers(0, 2, n) - rng.integers(0, 2, n) for _ in range(3)]
        iv = hierarchical_bootstrap([d.astype(float) for d in diffs], seed=7)
        widths.append(iv.high - iv.low)
    assert widths[1] < widths[0] / 2
    single = hierarchical_bootstrap([np.ones(10)], seed=7)   # one seed: the seed draw is trivial
    assert single.n_seeds == 1 and single.point == single.low == single.high == 100.0


def test_pairing_uses_the_questions_both_runs_answered():
    d = paired_differences({"a": 0.0, "b": 1.0, "c": 1.0}, {"c": 0.0, "a": 1.0, "z": 1.0})
    assert d.tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="no question in common"):
        paired_differences({"a": 1.0}, {"b": 1.0})


def test_the_report_is_complete_and_byte_identical_when_run_twice(sweep, result, tmp_path):
    first = write_outputs(result, tmp_path / "one")
    second = write_outputs(analyse(sweep, load_study(STUDY), load_paper_results(
        REPO / "experiments" / "paper_results.yaml")), tmp_path / "two")
    for name in ("report.md", "cells.csv"):
        assert first[name].read_bytes() == second[name].read_bytes()
    assert first["chart.png"].read_bytes()[:8] == PNG_MAGIC
    md = first["report.md"].read_text()
    study = load_study(STUDY)
    for frm, to in study.transitions:
        for bench in BENCHES:
            assert f"| {frm} → {to} | {LABELS[bench]}" in md, (frm, to, bench)
    assert "| row6_res336 → row7_gqa | GQA (seen in training) |" in md
    assert "not comparable to the paper's absolute numbers" in md
    assert "seeds 1, 2, 3" in md and "pretrained twins" in md and "300 questions" in md
    assert "0/6 benchmark cells exclude 0" in md
    assert "`21` (row2_format_prompt, seed 1): no eval results" in md
    assert "row9_13b, seed 3: no job folder" in md
    assert "1.0 min of job time" in md     # two jobs logged 30.5 s each
    rows = list(csv.DictReader(first["cells.csv"].open()))
    assert len(rows) == 9 * 6 + 6
    gqa = [r for r in rows if r["to"] == "row4_okvqa_ocr" and r["benchmark"] == "gqa"][0]
    assert gqa["verdict"] == "contradicted" and float(gqa["delta"]) == -20.0


def test_one_seed_is_said_in_the_report(tmp_path):
    sweep = tmp_path / "runs"
    for num, row in enumerate(("row0_llava", "row1_vqav2")):
        write_job(sweep, num, row, 1, row_scores(row, 1))
    out = write_outputs(analyse(sweep, load_study(STUDY), load_paper_results(
        REPO / "experiments" / "paper_results.yaml")), tmp_path / "out")
    md = out["report.md"].read_text()
    assert "one seed" in md and "the seed draw is trivial" in md
    assert "calibration: no job with training_seed_offset ≠ 0 for row7_gqa" in md


def test_mlflow_run_in_a_tmp_store(sweep, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main([str(sweep), "--study", str(STUDY), "--out", str(tmp_path / "out"), "--tracking-uri", uri,
                 "--paper", str(REPO / "experiments" / "paper_results.yaml")]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("table2_mini").experiment_id])
    m = run.data.metrics
    assert m["delta/row1_vqav2/mme"] == pytest.approx(20.0)
    assert m["ci_low/row1_vqav2/mme"] > 0 and m["ci_high/row4_okvqa_ocr/gqa"] < 0
    assert m["delta/calibration/gqa"] == 0
    assert "delta/row2_format_prompt/mme" not in m       # no data, no metric
    assert run.data.tags["seeds"] == "1,2,3" and "row9_13b" in run.data.tags["rows"]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["cells.csv", "chart.png",
                                                                             "report.md"]


def test_cli_exits_2_with_one_line_when_no_job_has_results(tmp_path, capsys):
    write_job(tmp_path / "runs", 0, "row0_llava", 1)
    assert main([str(tmp_path / "runs"), "--study", str(STUDY), "--no-mlflow", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no job with eval results" in err


def test_a_bad_study_file_is_refused_in_our_words(tmp_path):
    bad = tmp_path / "study.yaml"
    bad.write_text(STUDY.read_text().replace("vqav2: {direction: up", "vqav2: {direction: sideways", 1))
    with pytest.raises(StudyError, match=r"paper_claims\.row1_vqav2\.vqav2: direction must be up or down"):
        load_study(bad)
    bad.write_text(STUDY.read_text().replace("calibration: row7_gqa", "calibration: row42"))
    with pytest.raises(StudyError, match="calibration row row42 is in no transition"):
        load_study(bad)


def test_the_calibration_row_is_the_one_the_jobs_re_ran(tmp_path):
    """A sweep whose calibration re-ran another row than the study names (make table2-mini T2M_CALIBRATION=…):
    the jobs say which row it was, and the report says it differs from the study."""
    sweep = tmp_path / "runs"
    for num, (row, offset) in enumerate((("row0_llava", 0), ("row1_vqav2", 0), ("row0_llava", 100))):
        write_job(sweep / ("calibration" if offset else row), num, row, 1, row_scores(row, 1), offset=offset)
    result = analyse(sweep, load_study(STUDY), load_paper_results(REPO / "experiments" / "paper_results.yaml"))
    assert result.calibration_row == "row0_llava" and result.calibration_summary() == (0, 6)
    md = write_outputs(result, tmp_path / "out")["report.md"].read_text()
    assert "the study names `row7_gqa`" in md and "training_seed_offset ≠ 0" not in md
