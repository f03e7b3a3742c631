"""ScienceQA-IMG (test: 4,241 questions, 2,017 with an image; 7B 66.8 = IMG accuracy).

Files: ``scienceqa/llava_test_CQM-A.json`` (questions), images ``scienceqa/images/test/<id>/image.png``,
ground truth ``scienceqa/problems.json`` and ``scienceqa/pid_splits.json`` (``test`` split).

Prompt (``model_vqa_science.py --single-pred-prompt``): the human turn without ``<image>``, stripped, plus the
multiple-choice suffix; text-only questions are sent without an image. The answer record's ``prompt`` starts
with ``<image>\\n`` for image questions, and ``eval_science_qa.py`` decides IMG membership from it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics

from lmm.evaluation.answers import PredictionsError, index_by
from lmm.evaluation.benchmarks.base import (
    MULTIPLE_CHOICE_SUFFIX,
    Benchmark,
    Question,
    ScoreContext,
    image_path,
    read_json,
)

__all__ = ["SQA_OPTIONS", "ScienceQA", "ScienceQAAccuracy", "parse_sqa_answer", "sqa_choice_index"]

SQA_OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_sqa_answer(text: str, options: Sequence[str] = SQA_OPTIONS) -> str:
    """``eval_science_qa.py``: the exact letter, or ``"X. "`` as a prefix, or exactly one
    ``The answer is X.`` match (the ``.`` is a wildcard that needs one more character); else ``FAILED``."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    hits = _ANSWER_IS.findall(text)
    return hits[0] if len(hits) == 1 else "FAILED"


def sqa_choice_index(letter: str, n_choices: int, options: Sequence[str] = SQA_OPTIONS) -> int:
    """``get_pred_idx``: the option index, or -1 (wrong) for FAILED and out-of-range letters — the
    ``random.choice`` fallback in the official code is unreachable."""
    return options.index(letter) if letter in options[:n_choices] else -1


class ScienceQAAccuracy(torchmetrics.Metric):
    """Overall and IMG accuracy (×100). ``update(preds, answers, n_choices, is_img)`` with raw model texts,
    gold option indices, number of choices and IMG membership."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("correct", "total", "img_correct", "img_total", "failed"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, preds: Sequence[str], answers: Sequence[int], n_choices: Sequence[int], is_img: Sequence[bool]
    ) -> None:
        for text, answer, n, img in zip(preds, answers, n_choices, is_img, strict=True):
            letter = parse_sqa_answer(text)
            hit = int(sqa_choice_index(letter, n) == answer)
            self.correct += hit
            self.total += 1
            self.failed += int(letter == "FAILED")
            if img:
                self.img_correct += hit
                self.img_total += 1

    def compute(self) -> dict[str, Any]:
        def pct(c, n):
            return 100.0 * int(c) / int(n) if int(n) else None

        return {
            "img_accuracy": pct(self.img_correct, self.img_total),
            "accuracy": pct(self.correct, self.total),
            "n": int(self.total),
            "n_img": int(self.img_total),
            "n_failed_parse": int(self.failed),
        }


@dataclass(frozen=True)
class ScienceQA(Benchmark):
    name: str = "scienceqa"
    METRIC: ClassVar[type[ScienceQAAccuracy]] = ScienceQAAccuracy
    max_new_tokens: int = 1024
    split: str = "test"

    default_image_folder: ClassVar[str] = "scienceqa/images/test"
    QUESTION_FILE: ClassVar[str] = "scienceqa/llava_test_CQM-A.json"

    def questions(self, data_root: str | Path) -> list[Question]:
        images, source = self.image_dir(data_root), self.question_file(data_root)
        result = []
        for line in read_json(source):
            text = line["conversations"][0]["value"].replace("<image>", "").strip() + MULTIPLE_CHOICE_SUFFIX
            has_image = "image" in line
            result.append(
                Question(
                    question_id=line["id"],
                    prompt=text,
                    image=image_path(images, line["image"], line["id"], source) if has_image else None,
                    answer_prompt=("<image>\n" + text) if has_image else text,
                )
            )
        return result

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        split_ids = read_json(data_root / "scienceqa/pid_splits.json")[self.split]
        problems = read_json(data_root / "scienceqa/problems.json")
        # The official script keys predictions by question_id and looks them up with the string problem ids.
        preds, duplicates = index_by(records, lambda r: str(r["question_id"]))
        ctx.duplicates(duplicates)
        in_split = set(split_ids)
        ctx.extras(sum(1 for qid in preds if qid not in in_split))
        image_ids = self._image_question_ids(data_root)
        columns: dict[str, list[Any]] = {"preds": [], "answers": [], "n_choices": [], "is_img": []}
        missing = mismatched = 0
        for pid in split_ids:
            record = preds.get(pid)
            if record is None:
                # Official: text 'FAILED', prompt 'Unknown' -> counted wrong and outside the IMG denominator.
                missing += 1
                text, prompt = "FAILED", "Unknown"
            else:
                if "prompt" not in record:
                    raise PredictionsError(
                        f"ScienceQA prediction {pid!r} has no 'prompt'; IMG membership is read from it"
                    )
                text, prompt = record["text"], record["prompt"]
                if image_ids is not None and ("<image>" in prompt) != (pid in image_ids):
                    mismatched += 1
            columns["preds"].append(text)
            columns["answers"].append(problems[pid]["answer"])
            columns["n_choices"].append(len(problems[pid]["choices"]))
            columns["is_img"].append("<image>" in prompt)
        ctx.count("n_questions", len(split_ids))
        ctx.count(
            "n_missing", missing, "{n} question(s) have no prediction: counted wrong and left out of IMG"
        )
        ctx.count(
            "n_img_prompt_mismatch",
            mismatched,
            "{n} prediction prompt(s) disagree with the question file about having an image (IMG uses the prompt)",
        )
        result = self._feed(ScienceQAAccuracy(), columns)
        return {"score": result["img_accuracy"], **result}

    def _image_question_ids(self, data_root: Path) -> set[str] | None:
        path = data_root / self.QUESTION_FILE
        if not path.is_file():
            return None
        return {str(line["id"]) for line in read_json(path) if "image" in line}
