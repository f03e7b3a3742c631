"""VQAv2 (§3), VizWiz (§5) and TextVQA (§7): vectors, local scoring and submission files."""

from __future__ import annotations

import pytest

from lmm.evaluation.answers import PredictionsError
from lmm.evaluation.benchmarks import BenchmarkDataError, get_benchmark
from lmm.evaluation.benchmarks.textvqa import textvqa_question_from_prompt
from lmm.evaluation.benchmarks.vizwiz import VIZWIZ_SUFFIX
from lmm.evaluation.benchmarks.vqa_common import (
    TextVQAAccuracy,
    VizWizAccuracy,
    VQAv2Accuracy,
    vqa_server_accuracy,
)


@pytest.mark.parametrize(
    ("pred", "gts", "expected"),
    [
        ("2", ["2"] * 10, 1.0),
        ("Two", ["2"] * 10, 1.0),
        ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
        ("A dog.", ["dog"] * 2 + ["puppy"] * 8, 0.6),
        ("red", ["red"] + ["blue"] * 9, 0.3),
        ("cat", ["dog"] * 10, 0.0),
        ("T-shirt", ["t-shirt"] * 10, 0.0),  # unanimous GT is not normalised
        ("T-shirt", ["t-shirt"] * 9 + ["shirt"], 1.0),
        ("The man's", ["man's"] * 4 + ["men"] * 6, 0.0),  # m4c turns it into "man 's"
    ],
)
def test_vqav2_vectors(pred, gts, expected):
    assert VQAv2Accuracy().question_accuracy(pred, gts) == pytest.approx(expected)


def test_vqav2_raw_prediction_without_llava_preprocessing():
    assert vqa_server_accuracy("Two", ["2"] * 10) == 0.0


@pytest.mark.parametrize(
    ("pred", "gts", "expected"),
    [
        ("Unanswerable", ["unanswerable"] * 10, 1.0),
        ("Unanswerable", ["unanswerable"] * 5 + ["book"] * 5, 1.0),
        ("It is unanswerable.", ["unanswerable"] * 10, 0.0),
        ("T-shirt", ["t-shirt"] * 10, 0.0),  # the GT is never normalised
    ],
)
def test_vizwiz_vectors(pred, gts, expected):
    assert VizWizAccuracy().question_accuracy(pred, gts) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "gts", "expected"),
    [
        ("Dakota", ["dakota"] * 7 + ["dakota digital"] * 3, 1.0),
        ("Dakota digital", ["dakota"] * 7 + ["dakota digital"] * 3, 0.9),
        ("Coca-Cola", ["coca cola"] * 10, 1.0),
        ("1,000", ["1000"] * 2 + ["one thousand"] * 8, 0.6),
        ("nike", ["Nike"] + ["adidas"] * 9, 0.3),
    ],
)
def test_textvqa_vectors(pred, gts, expected):
    assert TextVQAAccuracy().question_accuracy(pred, gts) == pytest.approx(expected)


def test_metric_breakdowns_and_merge():
    metric = VQAv2Accuracy(question_types=["what color", "is the"])
    metric.update(["red", "yes"], [["red"] * 10, ["no"] * 10], ["other", "yes/no"], ["what color", "is the"])
    other = VQAv2Accuracy(question_types=["what color", "is the"])
    other.update(["no"], [["no"] * 10], ["yes/no"], ["is the"])
    metric.merge_state(other)
    result = metric.compute()
    assert result["accuracy"] == pytest.approx(200 / 3) and result["n"] == 3
    assert result["per_answer_type"] == {"yes/no": 50.0, "other": 100.0}
    assert result["per_question_type"] == {"what color": 100.0, "is the": 50.0}
    with pytest.raises(ValueError, match="unknown answer type"):
        metric.update(["x"], [["x"]], ["bogus"])


@pytest.fixture
def vqav2_val(tmp_path, write_json):
    questions = [
        {"question_id": 11, "image_id": 5, "question": "What color?"},
        {"question_id": 12, "image_id": 5, "question": "How many?"},
        {"question_id": 13, "image_id": 6, "question": "Is it?"},
    ]
    annotations = [
        {
            "question_id": 11,
            "question_type": "what color",
            "answer_type": "other",
            "answers": [{"answer": "red", "answer_id": i} for i in range(10)],
        },
        {
            "question_id": 12,
            "question_type": "how many",
            "answer_type": "number",
            "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["2"] * 3 + ["3"] * 7)],
        },
        {
            "question_id": 13,
            "question_type": "is the",
            "answer_type": "yes/no",
            "answers": [{"answer": "yes", "answer_id": i} for i in range(10)],
        },
    ]
    write_json(tmp_path / "vqav2/v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions})
    write_json(tmp_path / "vqav2/v2_mscoco_val2014_annotations.json", {"annotations": annotations})
    return tmp_path


def test_vqav2_val_scoring(vqav2_val, make_answer):
    bench = get_benchmark("vqav2").with_options(split="val")
    questions = bench.questions(vqav2_val)
    assert questions[0].prompt == "What color?\nAnswer the question using a single word or phrase."
    assert questions[0].image == vqav2_val / "vqav2/val2014/COCO_val2014_000000000005.jpg"
    preds = [make_answer(11, "Red"), make_answer(12, "Two"), make_answer(11, "red"), make_answer(99, "x")]
    result = bench.score(preds, vqav2_val)
    # 11 -> 1.0, 12 -> "2" (k=3) -> 0.9, 13 missing -> '' -> 0
    assert result["score"] == pytest.approx(100 * 1.9 / 3)
    assert result["per_answer_type"] == {"yes/no": 0.0, "number": pytest.approx(90.0), "other": 100.0}
    assert (result["n_missing"], result["n_duplicates"], result["n_extra"]) == (1, 1, 1)
    assert len(result["warnings"]) == 3


def test_vqav2_unparsable_lines_are_skipped_and_counted(vqav2_val, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 11, "text": "red"}\nnot json\n')
    result = get_benchmark("vqav2").with_options(split="val").score(path, vqav2_val)
    assert result["n_unparsable"] == 1 and result["n_missing"] == 2


def test_vqav2_test_dev_needs_evalai(vqav2_val, make_answer):
    with pytest.raises(BenchmarkDataError, match="EvalAI"):
        get_benchmark("vqav2").score([make_answer(11, "red")], vqav2_val)
    with pytest.raises(ValueError, match="split"):
        get_benchmark("vqav2").with_options(split="test")


def test_vqav2_submission(tmp_path, write_jsonl, make_answer):
    write_jsonl(
        tmp_path / "vqav2/llava_vqav2_mscoco_test2015.jsonl",
        [{"question_id": q, "image": "x.jpg", "text": "q"} for q in (1, 2, 3)],
    )
    upload, missing = get_benchmark("vqav2").submission(
        [make_answer(1, "Two dogs."), make_answer(3, "Yes")], tmp_path
    )
    assert upload == [
        {"question_id": 1, "answer": "2 dogs"},
        {"question_id": 2, "answer": ""},
        {"question_id": 3, "answer": "yes"},
    ]
    assert missing == 1


@pytest.fixture
def vizwiz_val(tmp_path, write_json):
    items = [
        {
            "image": "VizWiz_val_0.jpg",
            "question": "What is this?",
            "answer_type": "other",
            "answerable": 1,
            "answers": [{"answer": "book", "answer_confidence": "yes"}] * 10,
        },
        {
            "image": "VizWiz_val_1.jpg",
            "question": "What?",
            "answer_type": "unanswerable",
            "answerable": 0,
            "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
        },
    ]
    write_json(tmp_path / "vizwiz/val.json", items)
    return tmp_path


def test_vizwiz_val_scoring_and_upload(vizwiz_val, make_answer):
    bench = get_benchmark("vizwiz").with_options(split="val")
    questions = bench.questions(vizwiz_val)
    assert questions[1].prompt == "What?" + VIZWIZ_SUFFIX and questions[1].question_id == 1
    assert questions[1].image == vizwiz_val / "vizwiz/val/VizWiz_val_1.jpg"
    result = bench.score([make_answer(0, "A book."), make_answer(1, "Unanswerable")], vizwiz_val)
    assert result["score"] == 100.0 and result["per_answer_type"] == {"other": 100.0, "unanswerable": 100.0}
    with pytest.raises(PredictionsError, match="no prediction"):
        bench.score([make_answer(0, "book")], vizwiz_val)
    assert bench.submission([make_answer(0, "A book."), make_answer(1, "Unanswerable")], vizwiz_val) == [
        {"image": "VizWiz_val_0.jpg", "answer": "book"},
        {"image": "VizWiz_val_1.jpg", "answer": "unanswerable"},
    ]
    with pytest.raises(BenchmarkDataError, match="EvalAI"):
        get_benchmark("vizwiz").score([make_answer(0, "book")], vizwiz_val)


def test_vizwiz_fixture_questions(eval_samples):
    questions = get_benchmark("vizwiz").questions(eval_samples)
    assert len(questions) == 4 and questions[0].question_id == 0
    assert questions[0].prompt.endswith(VIZWIZ_SUFFIX)
    assert questions[0].image == eval_samples / "vizwiz/test/VizWiz_test_00000000.jpg"


def test_textvqa_prompt_processor():
    assert textvqa_question_from_prompt("What?\nReference OCR token: A, B\nAnswer the question") == "what?"
    assert textvqa_question_from_prompt("Reference OCR token: A\nWhat?\nAnswer") == "what?"
    assert textvqa_question_from_prompt("What?\nAnswer the question") == "what?"
    assert (
        textvqa_question_from_prompt("OCR tokens: a b Question: What is it? Short answer:") == "what is it?"
    )
    with pytest.raises(PredictionsError):
        textvqa_question_from_prompt("a\nb\nc\nd")


def test_textvqa_scoring_on_fixture_questions(eval_samples, tmp_path, write_json, make_answer):
    rows = [q for q in get_benchmark("textvqa").questions(eval_samples)]
    assert rows[0].prompt.startswith(
        "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL"
    )
    assert rows[0].image == eval_samples / "textvqa/train_images/003a8ae2ef43b901.jpg"
    data = [
        {
            "image_id": q.question_id,
            "question": q.prompt.split("\n")[0],
            "answers": ["dakota"] * 7 + ["dakota digital"] * 3,
        }
        for q in rows
    ]
    root = tmp_path
    write_json(root / "textvqa/TextVQA_0.5.1_val.json", {"data": data})
    (root / "textvqa").mkdir(exist_ok=True)
    (root / "textvqa/llava_textvqa_val_v051_ocr.jsonl").write_text(
        (eval_samples / "textvqa/llava_textvqa_val_v051_ocr.jsonl").read_text()
    )
    preds = [
        make_answer(rows[0].question_id, "Dakota", prompt=rows[0].prompt),
        make_answer(rows[1].question_id, "Dakota digital", prompt=rows[1].prompt),
        make_answer(rows[1].question_id, "Dakota digital", prompt=rows[1].prompt),
    ]
    result = get_benchmark("textvqa").score(preds, root)
    # the official mean runs over the answer records: (1.0 + 0.9 + 0.9) / 3
    assert result["score"] == pytest.approx(100 * 2.8 / 3)
    assert (result["n_missing"], result["n_duplicates"], result["n_questions"]) == (2, 1, 4)
    with pytest.raises(PredictionsError, match="no TextVQA annotation"):
        get_benchmark("textvqa").score([make_answer("zzz", "a", prompt="Q?\nAnswer")], root)
