"""MME (§9): the yes/no parse, the acc / acc+ arithmetic, the fixture and the conversion quirks."""

from __future__ import annotations

import pytest

from lmm.evaluation.answers import PredictionsError, read_predictions
from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.benchmarks.mme import MMEMetric, mme_original_prompt, parse_mme_answer


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes", "yes"),
        ("yesterday", "yes"),
        ("Eyes", "yes"),
        ("Yes, no", "yes"),
        ("No, there is no dog", "no"),
        ("Not sure", "no"),
        ("None", "no"),
        ("nope", "no"),
        ("There is a dog", "other"),
        ("I think yes", "other"),
        ("N/A", "other"),
    ],
)
def test_parse(text, label):
    assert parse_mme_answer(text) == label
    assert parse_mme_answer(text + "\n") == label  # the official reads lines with their newline


def test_score_vector_three_images():
    metric = MMEMetric()
    preds = ["Yes", "No", "Yes", "Yes", "No", "No"]
    gts = ["Yes", "No", "Yes", "No", "Yes", "No"]
    metric.update(preds, gts, ["count"] * 6, ["count/1.jpg"] * 2 + ["count/2.jpg"] * 2 + ["count/3.jpg"] * 2)
    task = metric.compute()["tasks"]["count"]
    assert task["acc"] == pytest.approx(400 / 6) and task["acc_plus"] == pytest.approx(100 / 3)
    assert task["score"] == pytest.approx(100.0)


def test_metric_is_mergeable_across_ranks():
    a, b = MMEMetric(), MMEMetric()
    a.update(["Yes"], ["Yes"], ["OCR"], ["OCR/1.jpg"])
    b.update(["Yes"], ["No"], ["OCR"], ["OCR/1.jpg"])  # the image's second question landed on another rank
    a.merge_state(b)
    assert a.compute()["tasks"]["OCR"] == {
        "score": 50.0,
        "acc": 50.0,
        "acc_plus": 0.0,
        "n_questions": 2,
        "n_images": 1,
        "n_other": 0,
        "n_images_not_2": 0,
    }


def test_prompt_restoration():
    gt = {"Is it red? Please answer yes or no.", "Is it blue?  Please answer yes or no."}
    suffix = "\nAnswer the question using a single word or phrase."
    assert (
        mme_original_prompt("Is it red?" + suffix, gt.__contains__) == "Is it red? Please answer yes or no."
    )
    assert (
        mme_original_prompt("Is it blue?" + suffix, gt.__contains__)
        == "Is it blue?  Please answer yes or no."
    )


def test_mme_fixture(eval_samples):
    result = get_benchmark("mme").score(eval_samples / "MME/answers/llava-v1.5-13b.jsonl", eval_samples)
    existence, code = result["tasks"]["existence"], result["tasks"]["code_reasoning"]
    # existence: 7/8 right, 3/4 images fully right; code_reasoning: 5/8 and 1/4
    assert (existence["acc"], existence["acc_plus"], existence["score"]) == (87.5, 75.0, 162.5)
    assert (code["acc"], code["acc_plus"], code["score"]) == (62.5, 25.0, 87.5)
    assert result["score"] == result["perception"] == 162.5 and result["cognition"] == 87.5
    assert len(result["tasks_missing"]) == 12 and result["warnings"]


def test_mme_fixture_questions(eval_samples):
    questions = get_benchmark("mme").questions(eval_samples)
    assert questions[0].question_id == questions[1].question_id == "code_reasoning/0020.png"
    assert questions[0].image == eval_samples / "MME/MME_Benchmark_release_version/code_reasoning/0020.png"


def test_mme_incomplete_predictions(eval_samples):
    records = read_predictions(eval_samples / "MME/answers/llava-v1.5-13b.jsonl").records
    with pytest.raises(PredictionsError, match="missing"):
        get_benchmark("mme").score(records[1:], eval_samples)
    with pytest.raises(PredictionsError, match="duplicated"):
        get_benchmark("mme").score(records + records[:1], eval_samples)
    with pytest.raises(PredictionsError, match="no MME ground truth"):
        get_benchmark("mme").score(records + [dict(records[0], prompt="Unknown question?")], eval_samples)
    multiline = [dict(records[0], text="Yes\nbecause")] + records[1:]
    assert get_benchmark("mme").score(multiline, eval_samples)["n_multiline"] == 1
