"""GQA (§4): conversion, exact match, breakdowns, missing predictions."""

from __future__ import annotations

import pytest

from lmm.evaluation.answers import PredictionsError
from lmm.evaluation.benchmarks import BenchmarkDataError, get_benchmark
from lmm.evaluation.benchmarks.gqa import GQAAccuracy, gqa_prediction, gqa_steps


@pytest.mark.parametrize(
    ("pred", "gold", "hit"),
    [
        ("Yes.", "yes", 1),
        ("Tank top", "tank top", 1),
        ("The woman", "woman", 0),
        ("gray", "grey", 0),
        ("Yes, it is.", "yes", 0),
    ],
)
def test_gqa_vectors(pred, gold, hit):
    assert int(gqa_prediction(pred) == gold) == hit


def test_steps_skip_exist_and_name_queries():
    question = {
        "semantic": [
            {"operation": "select", "argument": "table"},
            {"operation": "relate", "argument": "_,on,s"},
            {"operation": "query", "argument": "name"},
            {"operation": "exist", "argument": "?"},
        ]
    }
    assert gqa_steps(question) == 2


def _gt(answer, structural, semantic, balanced=True, question="Is it red?"):
    return {
        "answer": answer,
        "isBalanced": balanced,
        "question": question,
        "types": {"structural": structural, "semantic": semantic, "detailed": "x"},
        "semantic": [
            {"operation": "select", "argument": "x"},
            {"operation": "verify color", "argument": "red"},
        ],
    }


def test_gqa_scoring(tmp_path, write_json, make_answer, eval_samples):
    gt = {
        "1": _gt("yes", "verify", "attr"),
        "2": _gt("woman", "query", "obj", question="Who is that person?"),
        "3": _gt("no", "logical", "obj"),
        "4": _gt("cat", "query", "cat", balanced=False),
    }
    write_json(tmp_path / "gqa/data/testdev_balanced_questions.json", gt)
    preds = [
        make_answer("1", "Yes."),
        make_answer("2", "The woman"),
        make_answer(3, "no"),
        make_answer("3", "No"),
    ]
    result = get_benchmark("gqa").score(preds, tmp_path)
    assert result["score"] == pytest.approx(200 / 3)
    assert result["binary"] == 100.0 and result["open"] == 0.0
    assert result["per_structural"] == {"verify": 100.0, "query": 0.0, "logical": 100.0}
    assert result["per_semantic"] == {"attr": 100.0, "obj": 50.0}
    assert result["per_steps"] == {"2": {"accuracy": pytest.approx(200 / 3), "n": 3}}
    assert result["per_words"] == {"3": {"accuracy": 100.0, "n": 2}, "4": {"accuracy": 0.0, "n": 1}}
    assert result["n_duplicates"] == 1  # 3 and "3" are the same GQA question
    with pytest.raises(PredictionsError, match="missing predictions"):
        get_benchmark("gqa").score([make_answer("1", "yes")], tmp_path)
    with pytest.raises(BenchmarkDataError, match="testdev_balanced_questions.json"):
        get_benchmark("gqa").score(preds, eval_samples)


def test_gqa_metric_merge_and_unknown_types():
    a, b = GQAAccuracy(), GQAAccuracy()
    a.update(["yes"], ["yes"], ["verify"], ["attr"], [2], [5])
    b.update(["no"], ["yes"], ["query"], ["rel"], [3], [5])
    a.merge_state(b)
    result = a.compute()
    assert result["accuracy"] == 50.0 and result["per_words"] == {"5": {"accuracy": 50.0, "n": 2}}
    with pytest.raises(ValueError, match="structural"):
        a.update(["x"], ["x"], ["bogus"], ["attr"], [1], [1])


def test_gqa_fixture_questions(eval_samples):
    questions = get_benchmark("gqa").questions(eval_samples)
    assert [q.question_id for q in questions][:2] == ["201307251", "201640614"]
    assert questions[0].prompt == "Is it overcast?\nAnswer the question using a single word or phrase."
    assert questions[0].image == eval_samples / "gqa/data/images/n161313.jpg"
