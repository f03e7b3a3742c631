"""Reading / writing LLaVA answer JSONL."""

from __future__ import annotations

import json

import pytest

from lmm.evaluation.answers import (
    PredictionsError,
    as_prediction_file,
    index_by,
    make_answer_record,
    read_predictions,
    write_answers,
)
from lmm.evaluation.benchmarks.base import Question


def test_reader_counts_every_bad_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    lines = [
        json.dumps({"question_id": 1, "text": "Yes", "prompt": "p"}),
        "",  # blank lines are ignored
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"question_id": 2}),
        json.dumps({"question_id": 3, "text": 5}),
        json.dumps({"question_id": True, "text": "x"}),
        json.dumps({"question_id": "4", "text": "No"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    pf = read_predictions(path)
    assert [r["question_id"] for r in pf.records] == [1, "4"]
    assert pf.n_unparsable == 5
    assert [line for line, _ in pf.unparsable] == [3, 4, 5, 6, 7]
    assert "line 3: invalid JSON" in pf.describe_unparsable()
    assert "missing key(s) ['text']" in pf.describe_unparsable()


def test_reader_missing_file(tmp_path):
    with pytest.raises(PredictionsError, match="not found"):
        read_predictions(tmp_path / "nope.jsonl")


def test_records_are_validated_like_lines():
    pf = as_prediction_file([{"question_id": 1, "text": "a"}, {"text": "b"}])
    assert len(pf.records) == 1 and pf.n_unparsable == 1


def test_index_by_last_wins_and_reports_duplicates():
    records = [
        {"question_id": 1, "text": "a"},
        {"question_id": 2, "text": "b"},
        {"question_id": 1, "text": "c"},
    ]
    index, duplicates = index_by(records, lambda r: r["question_id"])
    assert index[1]["text"] == "c" and duplicates == [1]


def test_writer_round_trip_and_answer_record(tmp_path):
    question = Question(
        question_id="7",
        prompt="Q?\nsuffix",
        answer_prompt="<image>\nQ?\nsuffix",
        extra={"record_fields": {"round_id": 0}},
    )
    record = make_answer_record(question, "B", model_id="tiny", answer_id="abc")
    assert record == {
        "question_id": "7",
        "prompt": "<image>\nQ?\nsuffix",
        "text": "B",
        "answer_id": "abc",
        "model_id": "tiny",
        "metadata": {},
        "round_id": 0,
    }
    path = tmp_path / "out" / "answers.jsonl"
    assert write_answers(path, [record]) == 1
    assert write_answers(path, [dict(record, question_id="8")], append=True) == 1
    pf = read_predictions(path)
    assert [r["question_id"] for r in pf.records] == ["7", "8"] and pf.n_unparsable == 0
    with pytest.raises(PredictionsError):
        write_answers(path, [{"question_id": 1}])
    assert len(make_answer_record(question, "x", "m")["answer_id"]) == 22
