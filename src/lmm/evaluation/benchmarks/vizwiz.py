"""VizWiz-VQA (paper: test-dev, 8,000 questions, scored on EvalAI; 7B 50.0).

Files: ``vizwiz/llava_test.jsonl`` (questions; ``text`` carries both suffixes), images ``vizwiz/test/``.
The upload file is :func:`convert_vizwiz_for_submission` (``[{image, answer}]``, every question must be answered).

Local scoring (``split="val"``) uses the official ``vizwiz/val.json`` (``[{image, question, answers[10]{answer},
answer_type, answerable}]``) with images ``vizwiz/val/``; questions come from ``vizwiz/llava_val.jsonl`` if
present, otherwise from ``val.json`` itself (``question_id`` = position in the file, as in ``llava_test.jsonl``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lmm.evaluation.answers import PredictionsError, index_by
from lmm.evaluation.benchmarks.base import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    BenchmarkDataError,
    ScoreContext,
    read_json,
    read_jsonl,
)
from lmm.evaluation.benchmarks.vqa_common import SplitFiles, VizWizAccuracy
from lmm.evaluation.normalize import eval_ai_answer

__all__ = ["VIZWIZ_SUFFIX", "VizWiz", "convert_vizwiz_for_submission"]

VIZWIZ_SUFFIX = (
    "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT_ANSWER_SUFFIX
)


def convert_vizwiz_for_submission(
    records: Sequence[Mapping[str, Any]], questions: Sequence[Mapping[str, Any]]
) -> list[dict[str, str]]:
    """LLaVA's ``convert_vizwiz_for_submission.py``: ``{image, answer: EvalAIAnswerProcessor(text)}`` per
    question in question-file order; like the official ``assert``, a question without a prediction is an error."""
    texts = {r["question_id"]: r["text"] for r in records}
    missing = [q["question_id"] for q in questions if q["question_id"] not in texts]
    if missing:
        raise PredictionsError(f"{len(missing)} VizWiz question(s) have no prediction (e.g. {missing[:3]})")
    return [{"image": q["image"], "answer": eval_ai_answer(texts[q["question_id"]])} for q in questions]


@dataclass(frozen=True)
class VizWiz(SplitFiles, Benchmark):
    name: str = "vizwiz"
    METRIC: ClassVar[type[VizWizAccuracy]] = VizWizAccuracy
    split: str = "test"  # "test" (paper, EvalAI) or "val" (local ground truth)

    skips_unparsable: ClassVar[bool] = True
    QUESTION_FILES: ClassVar[dict[str, str]] = {
        "test": "vizwiz/llava_test.jsonl",
        "val": "vizwiz/llava_val.jsonl",
    }
    IMAGE_FOLDERS: ClassVar[dict[str, str]] = {"test": "vizwiz/test", "val": "vizwiz/val"}
    VAL_ANNOTATIONS: ClassVar[str] = "vizwiz/val.json"
    SERVER_SPLITS: ClassVar[dict[str, str]] = {"test": "EvalAI"}
    QUESTION_UNIT: ClassVar[str] = "VQA accuracy (the VizWiz server's min(#humans that agree / 3, 1))"
    TEST_QUESTIONS: ClassVar[str] = "vizwiz/test.json"  # the release's test split (llava_test.jsonl is made from it)

    def question_file(self, data_root: str | Path) -> Path:
        """The split's LLaVA question JSONL; for val without one, the annotation file."""
        path = Path(data_root) / self.QUESTION_FILES[self.split]
        return path if path.is_file() or self.split != "val" else Path(data_root) / self.VAL_ANNOTATIONS

    def question_rows(self, data_root: str | Path) -> list[dict[str, Any]]:
        path = self.question_file(data_root)
        if path.suffix == ".jsonl":
            return read_jsonl(path)
        return [
            {"question_id": i, "image": item["image"], "text": item["question"] + VIZWIZ_SUFFIX}
            for i, item in enumerate(read_json(path))
        ]

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        if self.split != "val":
            raise BenchmarkDataError(
                "VizWiz test ground truth exists only on the EvalAI server: write the upload file with "
                "`python -m lmm.evaluation convert vizwiz ...`, or score locally with --split val "
                f"({self.VAL_ANNOTATIONS})."
            )
        gt = {item["image"]: item for item in read_json(data_root / self.VAL_ANNOTATIONS)}
        rows = self.question_rows(data_root)
        texts, duplicates = index_by(records, lambda r: r["question_id"])
        ctx.duplicates(duplicates)
        known = {row["question_id"] for row in rows}
        ctx.extras(sum(1 for qid in texts if qid not in known))
        missing = [row["question_id"] for row in rows if row["question_id"] not in texts]
        if missing:
            raise PredictionsError(
                f"{len(missing)} VizWiz question(s) have no prediction (e.g. {missing[:3]}); the official "
                "conversion asserts that every question is answered"
            )
        ctx.count("n_questions", len(rows))
        ctx.count("n_missing", 0)
        preds, gts, types = [], [], []
        for row in rows:
            item = gt.get(row["image"])
            if item is None:
                raise BenchmarkDataError(f"no VizWiz ground truth for image {row['image']!r}")
            preds.append(texts[row["question_id"]]["text"])
            gts.append([a["answer"] for a in item["answers"]])
            types.append(item["answer_type"])
        metric = VizWizAccuracy()
        ctx.per_question([row["question_id"] for row in rows],
                         [metric.question_accuracy(p, g) for p, g in zip(preds, gts)])
        result = self._feed(metric, {"preds": preds, "gts": gts, "answer_types": types})
        return {"score": result.pop("accuracy"), "split": self.split, **result}

    def submission(self, records, data_root: str | Path) -> list[dict[str, str]]:
        return convert_vizwiz_for_submission(records, self.question_rows(data_root))
