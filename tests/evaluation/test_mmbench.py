"""MMBench / MMBench-CN (§10): extraction heuristics, CircularEval, TSV reading and prompts."""

from __future__ import annotations

import base64
import csv
import io

import pytest
from PIL import Image

from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.benchmarks.mmbench import MMBenchCircular, can_infer, read_mmbench_tsv

OPTIONS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("C", "C"),
        ("C. bird", "C"),
        ("(B)", "B"),
        ("B)", "B"),
        ("Answer: D", "D"),
        ("I think B is right", "B"),
        ("The answer is A", None),
        ("The answer is A. cat", "A"),
        ("a dog", "B"),
        ("It is a fish.", "D"),
        ("cats and dogs", None),
        ("A B", None),
        ("b", None),
    ],
)
def test_extraction(text, letter):
    assert can_infer(text, OPTIONS) == letter


def test_circular_group():
    metric = MMBenchCircular()
    metric.update(
        ["C", "B", "A", "D"], ["C", "B", "A", "D"], [OPTIONS] * 4, [5, 1_000_005, 2_000_005, 3_000_005]
    )
    assert metric.compute()["accuracy"] == 100.0
    metric = MMBenchCircular()
    metric.update(
        ["C", "B", "A", "A"], ["C", "B", "A", "D"], [OPTIONS] * 4, [5, 1_000_005, 2_000_005, 3_000_005]
    )
    result = metric.compute()
    assert result["accuracy"] == 0.0 and result["row_accuracy"] == 75.0


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (255, 0, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header)
        writer.writerows([[row.get(h, "") for h in header] for row in rows])


@pytest.fixture
def mmbench_root(tmp_path):
    image = _png_b64()
    rows = [
        {
            "index": 0,
            "question": "Which animal?",
            "hint": "nan",
            "A": "cat",
            "B": "dog",
            "C": "bird",
            "D": "",
            "answer": "B",
            "category": "recognition",
            "l2-category": "perception",
            "image": image,
        },
        {
            "index": 1000000,
            "question": "Which animal?",
            "hint": "nan",
            "A": "bird",
            "B": "cat",
            "C": "dog",
            "D": "",
            "answer": "C",
            "category": "recognition",
            "l2-category": "perception",
            "image": "0",
        },
        {
            "index": 1,
            "question": "Count?",
            "hint": "Look closely.",
            "A": "1",
            "B": "None",
            "C": "3",
            "D": "",
            "answer": "A",
            "category": "counting",
            "l2-category": "reasoning",
            "image": image,
        },
    ]
    _write_tsv(tmp_path / "mmbench/mmbench_dev_20230712.tsv", rows)
    _write_tsv(tmp_path / "mmbench_cn/mmbench_dev_cn_20231003.tsv", rows[:1])
    return tmp_path


def test_tsv_reader_uses_pandas_na(mmbench_root):
    rows = read_mmbench_tsv(mmbench_root / "mmbench/mmbench_dev_20230712.tsv")
    assert rows[0]["hint"] is None and rows[0]["D"] is None and rows[2]["B"] is None


def test_questions_and_prompts(mmbench_root):
    questions = get_benchmark("mmbench").questions(mmbench_root)
    first, copy, counting = questions
    assert first.question_id == 0 and first.image is None
    assert first.prompt == (
        "Which animal?\nA. cat\nB. dog\nC. bird\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert first.answer_prompt == "Which animal?\nA. cat\nB. dog\nC. bird"
    assert first.extra["record_fields"] == {
        "round_id": 0,
        "options": ["cat", "dog", "bird"],
        "option_char": ["A", "B", "C"],
    }
    assert copy.image_b64 == first.image_b64  # short image cell = reference to another row
    assert copy.load_image().size == (4, 3)
    # "None" is a pandas NA string: the options stop there; the hint goes first
    assert counting.prompt.startswith("Look closely.\nCount?\nA. 1\nAnswer with")
    cn = get_benchmark("mmbench_cn").questions(mmbench_root)
    assert cn[0].prompt.endswith("\nC. bird\n请直接回答选项字母。")
    assert get_benchmark("mmbench").max_new_tokens == 1024


def test_scoring(mmbench_root, make_answer):
    preds = [make_answer(0, "B"), make_answer(1000000, "C"), make_answer(1, "I cannot tell")]
    result = get_benchmark("mmbench").score(preds, mmbench_root)
    assert result["score"] == 50.0 and result["n_groups"] == 2
    assert result["per_category"] == {"counting": 0.0, "recognition": 100.0}
    assert result["per_l2_category"] == {"perception": 100.0, "reasoning": 0.0}
    assert result["n_uninferable_groups"] == 1 and result["warnings"]
    result = get_benchmark("mmbench").score(preds[:1], mmbench_root)
    assert result["score"] == 0.0 and result["n_missing"] == 2
    assert get_benchmark("mmbench_cn").score(preds[:1], mmbench_root)["score"] == 100.0
