"""POPE on COCO (8,910 questions; 7B 85.9 = mean F1 of adversarial / popular / random).

Files: ``pope/llava_pope_test.jsonl`` (questions with ``category``), images ``pope/val2014/``, labels
``pope/coco/coco_pope_{adversarial,popular,random}.json`` (POPE@e3e3926, JSONL despite the name).

``eval_pope.py`` *zips* each category's answers, in answer-file order, with that category's label file. A zip
silently misaligns on a missing, extra or duplicated answer, so those are errors here; answers that are merely
out of order are put back into question-file order (with a warning) rather than scored against the wrong labels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics

from lmm.evaluation.answers import PredictionsError, index_by
from lmm.evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    ScoreContext,
    read_jsonl,
)

__all__ = ["POPE", "POPEMetric", "pope_correct", "pope_yes_no"]

CATEGORIES = ("adversarial", "popular", "random")
_TP, _FP, _TN, _FN = range(4)


def pope_yes_no(text: str) -> str:
    """``eval_pope.py``: keep the text before the first ``.``, drop commas, split on single spaces; any word
    exactly ``No``, ``not`` or ``no`` means *no*, everything else (including ``NO``, ``Nope``, ``''``) *yes*."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_cell(text: str, label: str) -> int:
    """Where one answer falls in the confusion matrix (``_TP``, ``_FP``, ``_TN``, ``_FN``); positive = *yes*."""
    pred_yes = pope_yes_no(text) == "yes"
    label_yes = label != "no"  # the official maps 'no' to 0 and anything else to 1
    return (_TP if label_yes else _FP) if pred_yes else (_FN if label_yes else _TN)


def pope_correct(text: str, label: str) -> bool:
    """Whether one answer is right (a true positive or a true negative)."""
    return pope_cell(text, label) in (_TP, _TN)


class POPEMetric(torchmetrics.Metric):
    """Per-category confusion counts in one ``[K, 4]`` (TP, FP, TN, FN) tensor; positive = *yes*.
    ``update(preds, labels, categories)`` takes raw model texts and the ``yes``/``no`` labels."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: Sequence[str] = CATEGORIES, **kwargs):
        super().__init__(**kwargs)
        self.categories = list(categories)
        self.add_state(
            "confusion", torch.zeros(len(self.categories), 4, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Sequence[str], labels: Sequence[str], categories: Sequence[str]) -> None:
        for text, label, category in zip(preds, labels, categories, strict=True):
            if category not in self.categories:
                raise ValueError(f"unknown POPE category {category!r}; expected one of {self.categories}")
            cell = pope_cell(text, label)
            self.confusion[self.categories.index(category), cell] += 1

    def compute(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        f1s = []
        for i, name in enumerate(self.categories):
            tp, fp, tn, fn = (int(v) for v in self.confusion[i])
            n = tp + fp + tn + fn
            if n == 0:
                continue
            precision = tp / (tp + fp) if tp + fp else None  # the official divides unguarded
            recall = tp / (tp + fn) if tp + fn else None
            f1 = (
                2 * precision * recall / (precision + recall)
                if precision is not None and recall is not None and precision + recall
                else None
            )
            f1s.append(f1)
            result[name] = {
                "f1": None if f1 is None else 100.0 * f1,
                "accuracy": 100.0 * (tp + tn) / n,
                "precision": None if precision is None else 100.0 * precision,
                "recall": None if recall is None else 100.0 * recall,
                "yes_ratio": 100.0 * (tp + fp) / n,  # share of *predictions* that are yes
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
                "n": n,
            }
        defined = bool(f1s) and all(f is not None for f in f1s)
        result["mean_f1"] = 100.0 * sum(f1s) / len(f1s) if defined else None
        return result


@dataclass(frozen=True)
class POPE(Benchmark):
    name: str = "pope"
    METRIC: ClassVar[type[POPEMetric]] = POPEMetric
    QUESTION_UNIT: ClassVar[str] = "correct (1) or not (0); key <split>/<question_id>"
    default_image_folder: ClassVar[str] = "pope/val2014"
    QUESTION_FILE: ClassVar[str] = "pope/llava_pope_test.jsonl"
    LABEL_DIR: ClassVar[str] = "pope/coco"

    def _labels(self, data_root: Path, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Label records per category, checked against the question file (count and question text)."""
        label_dir = data_root / self.LABEL_DIR
        files = sorted(label_dir.glob("coco_pope_*.json")) if label_dir.is_dir() else []
        if not files:
            raise BenchmarkDataError(f"no POPE label files coco_pope_*.json in {label_dir}")
        by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_category[row["category"]].append(row)
        labels = {}
        for path in files:
            category = path.name[len("coco_pope_") : -len(".json")]
            cat_labels = read_jsonl(path)
            questions = by_category.get(category, [])
            if len(cat_labels) != len(questions):
                raise BenchmarkDataError(
                    f"{path.name} has {len(cat_labels)} labels but the question file has {len(questions)} "
                    f"'{category}' questions"
                )
            for label, row in zip(cat_labels, questions):
                if row["text"].split("\n")[0] != label["text"]:
                    raise BenchmarkDataError(
                        f"POPE '{category}' question {row['question_id']!r} ({row['text'].splitlines()[0]!r}) "
                        f"does not line up with label {label['question_id']!r} ({label['text']!r})"
                    )
            labels[category] = cat_labels
        unlabeled = set(by_category) - set(labels)
        if unlabeled:
            raise BenchmarkDataError(f"no label file for POPE categories {sorted(unlabeled)} in {label_dir}")
        return labels

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        rows = read_jsonl(data_root / self.QUESTION_FILE)
        labels = self._labels(data_root, rows)
        answers, duplicates = index_by(records, lambda r: r["question_id"])
        if duplicates:
            raise PredictionsError(
                f"{len(duplicates)} POPE question(s) answered more than once (e.g. {duplicates[:3]}); the official "
                "script zips answers with labels in order, so the scores would be misaligned"
            )
        category_of = {row["question_id"]: row["category"] for row in rows}
        unknown = [qid for qid in answers if qid not in category_of]
        if unknown:
            raise PredictionsError(
                f"{len(unknown)} POPE prediction(s) for unknown question ids (e.g. {unknown[:3]})"
            )
        missing = [row["question_id"] for row in rows if row["question_id"] not in answers]
        if missing:
            raise PredictionsError(
                f"{len(missing)} POPE question(s) have no prediction (e.g. {missing[:3]}); the official script "
                "zips answers with labels in order, so every question must be answered"
            )
        reordered = 0
        for category in labels:  # the official filters per category, keeping answer-file order
            in_file = [r["question_id"] for r in records if category_of[r["question_id"]] == category]
            in_questions = [row["question_id"] for row in rows if row["category"] == category]
            reordered += sum(1 for a, b in zip(in_file, in_questions) if a != b)
        ctx.count("n_questions", len(rows))
        ctx.count("n_missing", 0)
        ctx.count("n_duplicates", 0)
        ctx.count(
            "n_reordered",
            reordered,
            "{n} prediction(s) were not in question-file order; aligned to the labels by question_id",
        )
        columns: dict[str, list[Any]] = defaultdict(list)
        position = {category: 0 for category in labels}
        for row in rows:
            category = row["category"]
            columns["preds"].append(answers[row["question_id"]]["text"])
            columns["labels"].append(labels[category][position[category]]["label"])
            columns["categories"].append(category)
            position[category] += 1
        ctx.per_question([f"{row['category']}/{row['question_id']}" for row in rows],
                         [pope_correct(p, lab) for p, lab in zip(columns["preds"], columns["labels"])])
        metric = POPEMetric(categories=sorted(labels))
        result = self._feed(metric, columns)
        if result["mean_f1"] is None:
            ctx.warn(
                "an F1 score is undefined (no positive predictions or labels); the official script would crash"
            )
        return {"score": result.pop("mean_f1"), **result}
