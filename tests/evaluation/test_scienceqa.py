"""ScienceQA-IMG (§6): parser vectors, the fixture, the missing-prediction quirk."""

from __future__ import annotations

import pytest

from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.benchmarks.scienceqa import parse_sqa_answer, sqa_choice_index


@pytest.mark.parametrize(
    ("text", "correct"),
    [
        ("B", 1),
        ("B. apostrophe", 1),
        ("The answer is B.", 1),
        ("The answer is B", 0),
        ("B.", 0),
        ("(B)", 0),
        ("b", 0),
        ("D", 0),
        ("B is the run-on sentence.", 0),
    ],
)
def test_sqa_vectors_three_choices_gold_b(text, correct):
    assert int(sqa_choice_index(parse_sqa_answer(text), 3) == 1) == correct


def test_sqa_failed_cases():
    assert parse_sqa_answer("B is the run-on sentence.") == "FAILED"
    assert parse_sqa_answer("The answer is A. The answer is B.") == "FAILED"  # two hits
    assert sqa_choice_index("FAILED", 5) == -1


def test_sqa_fixture_questions(eval_samples):
    questions = {q.question_id: q for q in get_benchmark("scienceqa").questions(eval_samples)}
    text_only, with_image = questions["4"], questions["11"]
    assert text_only.image is None and not text_only.has_image
    assert text_only.answer_prompt == text_only.prompt
    assert with_image.image == eval_samples / "scienceqa/images/test/11/image.png"
    assert with_image.prompt.startswith("What is the name of the colony shown?\nA. Maryland")
    assert with_image.prompt.endswith("\nAnswer with the option's letter from the given choices directly.")
    assert with_image.answer_prompt == "<image>\n" + with_image.prompt


def test_sqa_fixture_score(eval_samples):
    result = get_benchmark("scienceqa").score(
        eval_samples / "scienceqa/answers/llava-v1.5-13b.jsonl", eval_samples
    )
    # right: 4 (B), 5 (B, IMG), 26 (A); IMG questions 5, 11, 23 -> 1 of 3; "A. hyperbole" parses to A (wrong)
    assert result["accuracy"] == pytest.approx(37.5)
    assert result["score"] == result["img_accuracy"] == pytest.approx(100 / 3)
    assert (result["n"], result["n_img"], result["n_missing"], result["n_img_prompt_mismatch"]) == (
        8,
        3,
        0,
        0,
    )


def test_sqa_missing_prediction_leaves_img_denominator(eval_samples, make_answer):
    records = [r for r in _fixture_records(eval_samples) if r["question_id"] != "11"]
    result = get_benchmark("scienceqa").score(records, eval_samples)
    assert result["n_missing"] == 1 and result["n_img"] == 2
    assert result["accuracy"] == pytest.approx(37.5)  # 11 was wrong anyway; still counted in the total
    assert result["img_accuracy"] == 50.0
    records.append(make_answer("11", "B", prompt="no image marker"))
    result = get_benchmark("scienceqa").score(records, eval_samples)
    assert result["n_img_prompt_mismatch"] == 1 and result["n_img"] == 2 and result["warnings"]


def _fixture_records(root):
    from lmm.evaluation.answers import read_predictions

    return read_predictions(root / "scienceqa/answers/llava-v1.5-13b.jsonl").records
