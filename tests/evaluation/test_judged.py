"""LLaVA-Bench-in-the-Wild and MM-Vet aggregation (§12) from stored judgments."""

from __future__ import annotations

import pytest

from lmm.evaluation.answers import PredictionsError
from lmm.evaluation.benchmarks import JudgeNotConfiguredError, get_benchmark
from lmm.evaluation.benchmarks.llava_wild import LLaVAWildScore
from lmm.evaluation.benchmarks.mmvet import MMVetScore


def test_llava_wild_vector_and_official_bug():
    metric = LLaVAWildScore()
    metric.update([8, 9, 7], [6, 9, 2], ["conv", "llava_bench_detail", "complex"])
    assert metric.compute()["all"]["relative"] == 70.8  # means (8.0, 5.667)
    metric = LLaVAWildScore()
    metric.update([8, 9, -1], [6, 9, -1], ["conv", "detail", "complex"])
    result = metric.compute()["all"]
    assert result["relative_official"] == 87.5  # the [-1, -1] tuple averaged in, as summarize_gpt_review does
    assert result["relative"] == 88.2 and result["n_parse_failures"] == 1 and result["n"] == 2


def _reviews(root):
    return sorted((root / "llava-bench-in-the-wild/reviews").glob("llava-v1.5-7b-eval*.jsonl"))


def test_llava_wild_fixture_runs(eval_samples):
    # The fixture holds the first 4 of 60 reviews per run:
    #   run 1: conv (7,9); detail (8,6); complex (8,6) (9,8)   -> all 7.25 / 8.0  = 90.6
    #   run 2: ... complex (9,8.5)                              -> all 7.375 / 8.0 = 92.2
    #   run 3: conv (8,10) ...                                  -> all 7.5 / 8.25  = 90.9
    result = get_benchmark("llava_wild").score(None, eval_samples, _reviews(eval_samples))
    assert [run["all"]["relative"] for run in result["runs"]] == [90.6, 92.2, 90.9]
    assert round(result["score"], 1) == 91.2
    assert [run["complex"]["relative"] for run in result["runs"]] == [82.4, 85.3, 82.4]
    assert result["per_category"]["conv"] == pytest.approx((128.6 + 128.6 + 125.0) / 3)
    assert result["per_category"]["detail"] == 75.0
    assert result["n_parse_failures"] == 0 and result["n_runs"] == 3
    assert result["score_official_with_failures"] == result["score"]


def test_llava_wild_needs_judgments(eval_samples):
    with pytest.raises(JudgeNotConfiguredError, match="no judge configured"):
        get_benchmark("llava_wild").score(None, eval_samples)
    with pytest.raises(PredictionsError, match="predictions file"):
        get_benchmark("pope").score(None, eval_samples)


def test_llava_wild_checks_reviews_against_predictions(eval_samples, make_answer):
    records = [
        make_answer(0, "x", answer_id="cvpdS8R38b3e2nFmRtAjr8"),
        make_answer(1, "y", answer_id="other"),
    ]
    result = get_benchmark("llava_wild").score(records, eval_samples, _reviews(eval_samples)[:1])
    assert result["n_stale_reviews"] == 1


def test_mmvet_vector():
    metric = MMVetScore(n_runs=1)
    metric.update([[1.0], [0.5], [0.0], [0.4]], [["rec"], ["rec", "ocr"], ["ocr"], ["rec", "know"]])
    result = metric.compute()
    assert result["total"] == pytest.approx(47.5)
    assert result["capabilities"] == {
        "rec": pytest.approx(63.333333),
        "ocr": 25.0,
        "know": pytest.approx(40.0),
    }
    assert result["integrations"]["rec_ocr"] == 50.0 and result["integrations"]["rec"] == 100.0


def test_mmvet_runs_mean_and_std(tmp_path, write_json):
    metadata = {
        f"v1_{i}": {"question": "q", "answer": "a", "capability": caps, "imagename": f"v1_{i}.png"}
        for i, caps in enumerate([["rec"], ["rec", "ocr"], ["ocr"], ["rec", "know"]])
    }
    write_json(tmp_path / "mm-vet/mm-vet.json", metadata)
    grades = {
        "v1_0": {"model": ["j"] * 2, "content": ["1.0", "1.0"], "score": [1.0, 1.0]},
        "v1_1": {"model": ["j"] * 2, "content": ["0.5", "0.0"], "score": [0.5, 0.0]},
        "v1_3": {"model": ["j"] * 2, "content": ["0.4", "0.4"], "score": [0.4, 0.4]},
    }
    path = write_json(tmp_path / "grades.json", grades)
    result = get_benchmark("mmvet").score(None, tmp_path, [path])
    assert result["runs"] == [pytest.approx(47.5), pytest.approx(35.0)]
    assert result["score"] == pytest.approx(41.25) and result["std"] == pytest.approx(6.25)
    assert result["capabilities"]["ocr"] == pytest.approx(12.5)  # (0.5/2 + 0/2) / 2 runs; v1_2 ungraded = 0
    assert result["n_ungraded"] == 1 and result["judge"] == ["j"]
    write_json(tmp_path / "bad.json", {"v1_9": {"score": [1.0, 1.0]}})
    with pytest.raises(PredictionsError, match="not in MM-Vet"):
        get_benchmark("mmvet").score(None, tmp_path, [tmp_path / "bad.json"])


def test_mmvet_fixture(eval_samples):
    # The fixture holds the first 4 of 218 samples of LLaVA-1.5-7B's 3-run GPT-4 grades (all 0.0).
    grades = eval_samples / "mm-vet/results/llava-v1.5-7b_gpt-4-grade-3runs.json"
    result = get_benchmark("mmvet").score(None, eval_samples, [grades])
    assert result["score"] == 0.0 and result["runs"] == [0.0, 0.0, 0.0] and result["std"] == 0.0
    assert result["n_runs"] == 3 and result["n"] == 4 and result["judge"] == ["gpt-4"]
    assert result["capabilities"] == {} and any("mm-vet.json" in w for w in result["warnings"])
    with pytest.raises(JudgeNotConfiguredError):
        get_benchmark("mmvet").score(None, eval_samples)
