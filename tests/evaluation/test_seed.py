"""SEED-Bench (§11): exact match, per type, image/video, id lookup."""

from __future__ import annotations

import pytest

from lmm.evaluation.answers import PredictionsError
from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.benchmarks.seed import SEEDAccuracy, convert_seed_for_submission


@pytest.mark.parametrize(("pred", "hit"), [("A", 1), ("A.", 0), ("a", 0)])
def test_seed_vectors(pred, hit):
    metric = SEEDAccuracy()
    metric.update([pred], ["A"], [1])
    assert metric.compute()["all"] == 100.0 * hit


def test_seed_scoring(tmp_path, write_json, make_answer):
    gt = {
        "question_type": {"Scene Understanding": 1, "Action Recognition": 10},
        "questions": [
            {"question_id": "101", "answer": "A", "data_type": "image", "question_type_id": 1},
            {"question_id": "102", "answer": "B", "data_type": "image", "question_type_id": 1},
            {"question_id": "v7", "answer": "C", "data_type": "video", "question_type_id": 10},
            {"question_id": "103", "answer": "D", "data_type": "image", "question_type_id": 1},
        ],
    }
    write_json(tmp_path / "seed_bench/SEED-Bench.json", gt)
    preds = [make_answer(101, "A"), make_answer("102", "B."), make_answer("v7", "C"), make_answer(5, "A")]
    result = get_benchmark("seed").score(preds, tmp_path)
    assert result["score"] == result["all"] == 50.0
    assert result["image"] == pytest.approx(100 / 3) and result["video"] == 100.0
    assert result["per_type"] == {"Scene Understanding": pytest.approx(100 / 3), "Action Recognition": 100.0}
    assert (result["n_missing"], result["n_extra"]) == (1, 1)
    with pytest.raises(PredictionsError, match="no prediction"):
        convert_seed_for_submission(preds, gt["questions"])
    rows = convert_seed_for_submission(preds + [make_answer(103, "D")], gt["questions"])
    assert rows[0] == {"question_id": "101", "prediction": "A"}
