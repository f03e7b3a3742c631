"""MME (2,374 questions on 1,187 images; 7B perception 1510.7).

Files: ``MME/llava_mme.jsonl`` (``question_id`` = ``<task>/[images/]<image>``, shared by the image's two
questions), images and ground truth ``MME/MME_Benchmark_release_version/<task>/`` (``.txt`` files of
``question<TAB>Yes|No`` lines, in ``questions_answers_YN/`` for tasks that keep images in ``images/``).

Scoring = ``MME/convert_answer_to_mme.py`` (restore `` Please answer yes or no.`` in place of the short-answer
suffix, two-space fallback, look up the GT) + ``eval_tool/calculation.py`` (yes/no parse on the lower-cased
answer, acc and acc+ per task, task score = 100·acc + 100·acc+). Perception = sum of 10 tasks, cognition = 4.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from lmm.evaluation.answers import PredictionsError
from lmm.evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    ScoreContext,
    read_jsonl,
    read_text,
    stable_id,
)
from lmm.text.prompts import SHORT_ANSWER

__all__ = ["MME", "MMEMetric", "parse_mme_answer"]

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
TASKS = PERCEPTION + COGNITION
_SUFFIX = SHORT_ANSWER
_ORIGINAL = " Please answer yes or no."


def parse_mme_answer(text: str) -> str:
    """``calculation.py``: lower-case; exactly yes/no is kept, else the first 4 characters decide (``yes``
    inside → yes, elif ``no`` → no), else ``other`` (always wrong)."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_correct(parsed: str, gt: str) -> bool:
    """``calculation.py``: a parsed answer (:func:`parse_mme_answer`) is right when it is the lower-cased GT."""
    return parsed == gt.lower()


def mme_original_prompt(prompt: str, has_gt) -> str:
    """``convert_answer_to_mme.py``: drop LLaVA's suffix, restore the original yes/no instruction."""
    if _SUFFIX in prompt:
        prompt = prompt.replace(_SUFFIX, "").strip()
    if _ORIGINAL.strip() not in prompt:
        prompt = prompt + _ORIGINAL
        if not has_gt(prompt):
            prompt = prompt.replace(_ORIGINAL, " " + _ORIGINAL)
    return prompt


def _task_and_file(question_id: str) -> tuple[str, str]:
    return question_id.split("/")[0], question_id.split("/")[-1].split(".")[0] + ".txt"


class MMEMetric(torchmetrics.Metric):
    """Per task: acc and acc+ from a cat-reduced list of (task id, image id, correct) grouped in ``compute``.
    ``update(preds, gts, tasks, images)`` takes raw model texts, ``Yes``/``No`` GT, task names and image keys."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("task_ids", "image_ids", "hits"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.add_state("other", torch.zeros(len(TASKS), dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, preds: Sequence[str], gts: Sequence[str], tasks: Sequence[str], images: Sequence[str]
    ) -> None:
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown MME task(s) {sorted(unknown)}; expected {list(TASKS)}")
        parsed = [parse_mme_answer(p) for p in preds]
        device = self.other.device
        task_ids = [TASKS.index(t) for t in tasks]
        self.task_ids.append(torch.tensor(task_ids, dtype=torch.long, device=device))
        self.image_ids.append(torch.tensor([stable_id(i) for i in images], dtype=torch.long, device=device))
        self.hits.append(
            torch.tensor([int(mme_correct(p, g)) for p, g in zip(parsed, gts, strict=True)], device=device)
        )
        for task_id, p in zip(task_ids, parsed):
            self.other[task_id] += int(p == "other")

    def compute(self) -> dict[str, Any]:
        if not len(self.task_ids):
            return {"perception": 0.0, "cognition": 0.0, "tasks": {}}
        tasks, images, hits = (dim_zero_cat(s).tolist() for s in (self.task_ids, self.image_ids, self.hits))
        per_image: dict[tuple[int, int], list[int]] = defaultdict(list)
        for task, image, hit in zip(tasks, images, hits):
            per_image[(task, image)].append(hit)
        per_task: dict[str, dict[str, Any]] = {}
        for task_id in sorted(set(tasks)):
            groups = [v for (t, _), v in per_image.items() if t == task_id]
            n_q = sum(len(v) for v in groups)
            acc = 100.0 * sum(sum(v) for v in groups) / n_q
            acc_plus = 100.0 * sum(1 for v in groups if all(v)) / len(groups)
            per_task[TASKS[task_id]] = {
                "score": acc + acc_plus,
                "acc": acc,
                "acc_plus": acc_plus,
                "n_questions": n_q,
                "n_images": len(groups),
                "n_other": int(self.other[task_id]),
                "n_images_not_2": sum(1 for v in groups if len(v) != 2),
            }
        return {
            "perception": sum(per_task[t]["score"] for t in PERCEPTION if t in per_task),
            "cognition": sum(per_task[t]["score"] for t in COGNITION if t in per_task),
            "tasks": per_task,
        }


@dataclass(frozen=True)
class MME(Benchmark):
    name: str = "mme"
    METRIC: ClassVar[type[MMEMetric]] = MMEMetric
    QUESTION_UNIT: ClassVar[str] = "correct (1) or not (0); key <task>/<image>/<question>"
    default_image_folder: ClassVar[str] = "MME/MME_Benchmark_release_version"
    QUESTION_FILE: ClassVar[str] = "MME/llava_mme.jsonl"
    GT_DIR: ClassVar[str] = "MME/MME_Benchmark_release_version"

    @staticmethod
    def ground_truth(release_dir: Path) -> dict[tuple[str, str, str], str]:
        """``get_gt``: ``{(task, txt file, question): answer}`` from the release folder."""
        if not release_dir.is_dir():
            raise BenchmarkDataError(f"MME release folder not found: {release_dir}")
        gt = {}
        for task_dir in sorted(p for p in release_dir.iterdir() if p.is_dir()):
            qa_dir = task_dir / "questions_answers_YN" if (task_dir / "images").exists() else task_dir
            for path in sorted(qa_dir.glob("*.txt")):
                for number, line in enumerate(read_text(path).splitlines(), start=1):
                    if not line.strip():
                        continue
                    fields = line.strip().split("\t")
                    if len(fields) != 2:
                        raise BenchmarkDataError(f"{path}:{number}: expected 'question<TAB>answer', got {line!r}")
                    gt[(task_dir.name, path.name, fields[0])] = fields[1]
        return gt

    def _key(self, gt, question_id: str, prompt: str) -> tuple[str, str, str]:
        task, file = _task_and_file(question_id)
        question = mme_original_prompt(prompt, lambda q: (task, file, q) in gt)
        if (task, file, question) not in gt:
            raise PredictionsError(f"no MME ground truth for {question_id!r} / {question!r}")
        return task, file, question

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        gt = self.ground_truth(data_root / self.GT_DIR)
        rows = read_jsonl(data_root / self.QUESTION_FILE)
        row_keys = [self._key(gt, r["question_id"], r["text"]) for r in rows]
        expected = Counter(row_keys)
        columns: dict[str, list[Any]] = defaultdict(list)
        got: Counter = Counter()
        for record in records:
            if "prompt" not in record:
                raise PredictionsError(
                    f"MME prediction {record['question_id']!r} has no 'prompt' to look up its GT"
                )
            key = self._key(gt, record["question_id"], record["prompt"])
            got[key] += 1
            columns["keys"].append(key)
            columns["preds"].append(record["text"])
            columns["gts"].append(gt[key])
            columns["tasks"].append(key[0])
            columns["images"].append(record["question_id"])
        problems = {
            "missing": sum((expected - got).values()),
            "duplicated": sum((got - expected).values()),
        }
        if any(problems.values()):
            raise PredictionsError(
                f"MME predictions do not match the question file ({problems}); the official tool pairs consecutive "
                "lines per image, so every question must be answered exactly once"
            )
        ctx.count("n_questions", sum(expected.values()))
        ctx.count("n_missing", 0)
        ctx.count("n_duplicates", 0)
        ctx.count(
            "n_multiline",
            sum(1 for t in columns["preds"] if "\n" in t or "\t" in t),
            "{n} answer(s) contain a newline or tab, which breaks the official tool's line format; scored as text",
        )
        hits = {(key, record["question_id"]): mme_correct(parse_mme_answer(record["text"]), gt[key])
                for key, record in zip(columns["keys"], records)}
        ctx.per_question([f"{r['question_id']}/{key[2]}" for r, key in zip(rows, row_keys)],
                         [hits[key, r["question_id"]] for r, key in zip(rows, row_keys)])
        del columns["keys"]
        result = self._feed(MMEMetric(), columns)
        absent = [t for t in TASKS if t not in result["tasks"]]
        if absent:
            ctx.warn(f"MME tasks without questions here (sums cover the others only): {absent}")
        ctx.count("n_tasks", len(result["tasks"]))
        return {"score": result["perception"], **result, "tasks_missing": absent}
