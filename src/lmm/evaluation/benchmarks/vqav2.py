"""VQAv2 (paper: test-dev, 107,394 questions, scored on EvalAI).

Files under ``data_root`` (LLaVA layout, ``scripts/v1_5/eval/vqav2.sh``):

* ``vqav2/llava_vqav2_mscoco_test-dev2015.jsonl`` — test-dev questions (``text`` has the suffix); images
  ``vqav2/test2015/``.
* ``vqav2/llava_vqav2_mscoco_test2015.jsonl`` — all test2015 questions; the upload file covers these
  (:func:`convert_vqav2_for_submission`, ``''`` for questions without a prediction).
* Local scoring (``split="val"``): ``vqav2/v2_mscoco_val2014_annotations.json`` (the official VQA annotation
  file: ``annotations[{question_id, question_type, answer_type, answers[10]{answer}}]``) and either
  ``vqav2/llava_vqav2_mscoco_val2014.jsonl`` (LLaVA question format) or the official
  ``vqav2/v2_OpenEnded_mscoco_val2014_questions.json`` (the prompt is built as question + short-answer suffix);
  images ``vqav2/val2014/``.

Test-dev ground truth is not public: ``score`` with ``split="test-dev"`` needs an explicit ``annotations`` file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lmm.evaluation.answers import index_by
from lmm.evaluation.benchmarks.base import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    BenchmarkDataError,
    ScoreContext,
    read_json,
    read_jsonl,
)
from lmm.evaluation.benchmarks.vqa_common import SplitFiles, VQAv2Accuracy
from lmm.evaluation.normalize import eval_ai_answer

__all__ = ["VQAv2", "convert_vqav2_for_submission"]


def convert_vqav2_for_submission(
    records: Sequence[Mapping[str, Any]], test_questions: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """LLaVA's ``convert_vqav2_for_submission.py``: one ``{question_id, answer}`` per test2015 question, the
    answer passed through ``EvalAIAnswerProcessor`` and ``''`` when there is no prediction (last record wins).
    Returns the upload list and the number of questions that had no prediction."""
    texts = {r["question_id"]: r["text"] for r in records}
    upload, missing = [], 0
    for question in test_questions:
        qid = question["question_id"]
        if qid in texts:
            upload.append({"question_id": qid, "answer": eval_ai_answer(texts[qid])})
        else:
            upload.append({"question_id": qid, "answer": ""})
            missing += 1
    return upload, missing


@dataclass(frozen=True)
class VQAv2(SplitFiles, Benchmark):
    name: str = "vqav2"
    split: str = "test-dev"  # "test-dev" (paper, EvalAI) or "val" (local ground truth)
    annotations: str | None = None  # override of the annotation file (absolute or relative to data_root)

    skips_unparsable: ClassVar[bool] = True
    QUESTION_UNIT: ClassVar[str] = "VQA accuracy (the server's min(#humans that agree / 3, 1), leave-one-out mean)"
    QUESTION_FILES: ClassVar[dict[str, str]] = {
        "test-dev": "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",
        "val": "vqav2/llava_vqav2_mscoco_val2014.jsonl",
    }
    IMAGE_FOLDERS: ClassVar[dict[str, str]] = {"test-dev": "vqav2/test2015", "val": "vqav2/val2014"}
    OFFICIAL_VAL_QUESTIONS: ClassVar[str] = "vqav2/v2_OpenEnded_mscoco_val2014_questions.json"
    VAL_ANNOTATIONS: ClassVar[str] = "vqav2/v2_mscoco_val2014_annotations.json"
    TEST_QUESTIONS: ClassVar[str] = "vqav2/llava_vqav2_mscoco_test2015.jsonl"
    SERVER_SPLITS: ClassVar[dict[str, str]] = {"test-dev": "EvalAI"}

    @property
    def scored_on(self) -> str | None:
        """EvalAI for test-dev, unless an annotation file is given (then it is scored here)."""
        return None if self.annotations else super().scored_on

    def question_file(self, data_root: str | Path) -> Path:
        """The split's LLaVA question JSONL; for val without one, the official question file."""
        path = Path(data_root) / self.QUESTION_FILES[self.split]
        return path if path.is_file() or self.split != "val" else Path(data_root) / self.OFFICIAL_VAL_QUESTIONS

    def question_rows(self, data_root: str | Path) -> list[dict[str, Any]]:
        path = self.question_file(data_root)
        if path.suffix == ".jsonl":
            return read_jsonl(path)
        official = read_json(path)
        return [
            {
                "question_id": q["question_id"],
                "image": f"COCO_val2014_{int(q['image_id']):012d}.jpg",
                "text": q["question"] + SHORT_ANSWER_SUFFIX,
            }
            for q in official["questions"]
        ]

    def metric(self, data_root: str | Path | None = None) -> VQAv2Accuracy:
        """Per-question-type accuracy needs the type list of the annotation file (when there is one)."""
        question_types: list[str] = []
        if data_root is not None and (self.annotations or self.split == "val"):
            path = self._annotation_path(Path(data_root))
            if path.is_file():
                question_types = sorted({a["question_type"] for a in _annotation_list(read_json(path))})
        return VQAv2Accuracy(question_types=question_types)

    def _annotation_path(self, data_root: Path) -> Path:
        if self.annotations:
            path = Path(self.annotations)
            return path if path.is_absolute() else data_root / path
        if self.split == "val":
            return data_root / self.VAL_ANNOTATIONS
        raise BenchmarkDataError(
            "VQAv2 test-dev ground truth exists only on the EvalAI server: write the upload file with "
            "`python -m lmm.evaluation convert vqav2 ...` and submit it, or score locally with --split val "
            f"({self.VAL_ANNOTATIONS}), or pass an annotation file explicitly."
        )

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        annotations = {
            a["question_id"]: a for a in _annotation_list(read_json(self._annotation_path(data_root)))
        }
        rows = self.question_rows(data_root)
        texts, duplicates = index_by(records, lambda r: r["question_id"])
        ctx.duplicates(duplicates)
        known = {row["question_id"] for row in rows}
        ctx.extras(sum(1 for q in texts if q not in known))
        preds, gts, atypes, qtypes = [], [], [], []
        missing = 0
        for row in rows:
            qid = row["question_id"]
            if qid not in annotations:
                raise BenchmarkDataError(f"no ground truth for VQAv2 question {qid!r} in the annotation file")
            record = texts.get(qid)
            missing += record is None
            preds.append("" if record is None else record["text"])  # LLaVA writes '' for missing answers
            ann = annotations[qid]
            gts.append([a["answer"] for a in ann["answers"]])
            atypes.append(ann["answer_type"])
            qtypes.append(ann["question_type"])
        ctx.count("n_questions", len(rows))
        ctx.count("n_missing", missing, "{n} question(s) have no prediction and score 0 (answer '')")
        metric = VQAv2Accuracy(question_types=sorted(set(qtypes)))
        ctx.per_question([row["question_id"] for row in rows], [
            0.0 if texts.get(row["question_id"]) is None else metric.question_accuracy(pred, gt)
            for row, pred, gt in zip(rows, preds, gts)])
        result = self._feed(
            metric, {"preds": preds, "gts": gts, "answer_types": atypes, "question_types": qtypes}
        )
        return {"score": result.pop("accuracy"), "split": self.split, **result}

    def submission(self, records, data_root: str | Path) -> tuple[list[dict[str, Any]], int]:
        return convert_vqav2_for_submission(records, read_jsonl(Path(data_root) / self.TEST_QUESTIONS))


def _annotation_list(data: Any) -> list[dict[str, Any]]:
    return data["annotations"] if isinstance(data, dict) else data
