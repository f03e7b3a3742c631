"""TextVQA val (5,000 questions; 7B 58.2).

Files: ``textvqa/llava_textvqa_val_v051_ocr.jsonl`` (``question_id`` is the *image* id; ``text`` =
question + ``Reference OCR token: …`` line + suffix), images ``textvqa/train_images/``, ground truth
``textvqa/TextVQA_0.5.1_val.json``.

``eval_textvqa.py`` joins every answer record to the annotation ``(image_id, question.lower())``, where the
question is recovered from the record's ``prompt``; the accuracy is the mean over the *answer records* (so a
missing question is simply not counted, and a duplicated one counts twice — both reported here as warnings).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lmm.evaluation.answers import PredictionsError
from lmm.evaluation.benchmarks.base import (
    Benchmark,
    ScoreContext,
    read_json,
    read_jsonl,
)
from lmm.evaluation.benchmarks.vqa_common import TextVQAAccuracy

__all__ = ["TextVQA", "textvqa_question_from_prompt"]

_OLD_STYLE = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def textvqa_question_from_prompt(prompt: str) -> str:
    """``prompt_processor`` of ``eval_textvqa.py``: the lower-cased question line of a saved prompt."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OLD_STYLE.search(prompt)
        if match is None:
            raise PredictionsError(f"cannot find the question in TextVQA prompt {prompt!r}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise PredictionsError(
            f"unrecognised TextVQA prompt layout (the official script asserts): {prompt!r}"
        )
    return question.lower()


@dataclass(frozen=True)
class TextVQA(Benchmark):
    name: str = "textvqa"
    METRIC: ClassVar[type[TextVQAAccuracy]] = TextVQAAccuracy
    default_image_folder: ClassVar[str] = "textvqa/train_images"
    QUESTION_FILE: ClassVar[str] = "textvqa/llava_textvqa_val_v051_ocr.jsonl"
    ANNOTATIONS: ClassVar[str] = "textvqa/TextVQA_0.5.1_val.json"
    QUESTION_UNIT: ClassVar[str] = "VQA accuracy (m4c-normalised, min(#humans that agree / 3, 1))"

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        annotations = {
            (a["image_id"], a["question"].lower()): a for a in read_json(data_root / self.ANNOTATIONS)["data"]
        }
        keys = []
        for record in records:
            if "prompt" not in record:
                raise PredictionsError(
                    f"TextVQA prediction {record['question_id']!r} has no 'prompt' to join on"
                )
            key = (record["question_id"], textvqa_question_from_prompt(record["prompt"]))
            if key not in annotations:
                raise PredictionsError(f"no TextVQA annotation for image {key[0]!r} and question {key[1]!r}")
            keys.append(key)
        seen = Counter(keys)
        ctx.duplicates(
            [k for k, n in seen.items() if n > 1], policy="each copy is scored, as the official does"
        )
        question_file = data_root / self.QUESTION_FILE
        if question_file.is_file():
            expected = Counter(
                (row["question_id"], textvqa_question_from_prompt(row["text"]))
                for row in read_jsonl(question_file)
            )
            ctx.count("n_questions", sum(expected.values()))
            ctx.count(
                "n_missing",
                sum((expected - seen).values()),
                "{n} question(s) have no prediction; the official accuracy simply leaves them out",
            )
        else:
            ctx.warn(f"{question_file} not found: cannot check for missing questions")
        gts = [annotations[k]["answers"] for k in keys]
        metric = TextVQAAccuracy()
        self._question_scores(data_root, annotations, keys, [metric.question_accuracy(r["text"], g)
                                                              for r, g in zip(records, gts)], ctx)
        result = self._feed(metric, {"preds": [r["text"] for r in records], "gts": gts})
        return {"score": result.pop("accuracy"), **result}

    def _question_scores(self, data_root: Path, annotations, keys, accuracies, ctx: ScoreContext) -> None:
        """Per question of the question file (the annotation's ``question_id`` as key): its VQA accuracy, 0 when
        unanswered, the mean over the copies when answered more than once (the official mean counts each)."""
        answered: dict[tuple, list[float]] = {}
        for key, accuracy in zip(keys, accuracies):
            answered.setdefault(key, []).append(accuracy)
        question_file = data_root / self.QUESTION_FILE
        order = ([(row["question_id"], textvqa_question_from_prompt(row["text"])) for row in read_jsonl(question_file)]
                 if question_file.is_file() else list(answered))
        ctx.per_question([annotations.get(k, {}).get("question_id", f"{k[0]}/{k[1]}") for k in order],
                         [sum(answered[k]) / len(answered[k]) if k in answered else 0.0 for k in order])
