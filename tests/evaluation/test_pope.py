"""POPE (§8): yes/no mapping, the metric vector, the fixture and the zip-alignment errors."""

from __future__ import annotations

import pytest

from lmm.evaluation.answers import PredictionsError, read_predictions
from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.benchmarks.pope import POPEMetric, pope_yes_no


@pytest.mark.parametrize("text", ["No.", "No, there is no dog.", "There is not a dog."])
def test_maps_to_no(text):
    assert pope_yes_no(text) == "no"


@pytest.mark.parametrize(
    "text", ["Yes", "Yes, there is a dog. No cat.", "NO", "Nope", "I don't see one", "", "There is no\ndog"]
)
def test_maps_to_yes(text):
    assert pope_yes_no(text) == "yes"


def test_metric_vector():
    metric = POPEMetric(categories=["random"])
    metric.update(["yes", "no", "no", "yes", "yes"], ["yes", "yes", "no", "no", "yes"], ["random"] * 5)
    result = metric.compute()["random"]
    assert (result["tp"], result["fn"], result["tn"], result["fp"]) == (2, 1, 1, 1)
    for key in ("precision", "recall", "f1"):
        assert result[key] == pytest.approx(200 / 3)
    assert result["accuracy"] == pytest.approx(60.0) and result["yes_ratio"] == pytest.approx(60.0)


def test_undefined_f1_is_none_not_a_crash():
    metric = POPEMetric(categories=["random"])
    metric.update(["no", "no"], ["no", "no"], ["random"] * 2)
    result = metric.compute()
    assert result["random"]["f1"] is None and result["mean_f1"] is None


def _fixture(root):
    return read_predictions(root / "pope/answers/llava-v1.5-13b.jsonl").records


def test_pope_fixture(eval_samples):
    result = get_benchmark("pope").score(_fixture(eval_samples), eval_samples)
    # every split: labels yes,no,yes,no vs answers No,No,Yes,No -> TP 1, FN 1, TN 2, FP 0
    for split in ("adversarial", "popular", "random"):
        assert (result[split]["tp"], result[split]["fn"], result[split]["tn"], result[split]["fp"]) == (
            1,
            1,
            2,
            0,
        )
        assert result[split]["f1"] == pytest.approx(200 / 3)
        assert result[split]["accuracy"] == 75.0 and result[split]["yes_ratio"] == 25.0
    assert result["score"] == pytest.approx(200 / 3)
    assert result["n_questions"] == 12 and result["warnings"] == []


def test_pope_fixture_questions(eval_samples):
    questions = get_benchmark("pope").questions(eval_samples)
    assert len(questions) == 12 and questions[4].category == "random"
    assert questions[0].image == eval_samples / "pope/val2014/COCO_val2014_000000310196.jpg"


def test_pope_alignment_errors(eval_samples):
    records = _fixture(eval_samples)
    with pytest.raises(PredictionsError, match="no prediction"):
        get_benchmark("pope").score(records[:-1], eval_samples)
    with pytest.raises(PredictionsError, match="more than once"):
        get_benchmark("pope").score(records + records[:1], eval_samples)
    with pytest.raises(PredictionsError, match="unknown question"):
        get_benchmark("pope").score(records + [dict(records[0], question_id=999)], eval_samples)


def test_pope_out_of_order_answers_are_realigned(eval_samples):
    records = _fixture(eval_samples)
    shuffled = records[1:4] + records[:1] + records[4:]
    result = get_benchmark("pope").score(shuffled, eval_samples)
    assert result["n_reordered"] == 4 and result["score"] == pytest.approx(200 / 3)
    interleaved = records[4:8] + records[:4] + records[8:]  # per-category order unchanged: nothing to fix
    assert get_benchmark("pope").score(interleaved, eval_samples)["n_reordered"] == 0
