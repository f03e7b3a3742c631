"""Soft-accuracy metrics shared by VQAv2, VizWiz and TextVQA (they differ only in what gets normalised)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torchmetrics

from lmm.evaluation.normalize import (
    eval_ai_answer,
    soft_accuracy,
    strip_whitespace,
    vizwiz_server_normalize,
    vqa_server_normalize,
)

__all__ = ["TextVQAAccuracy", "VQASoftAccuracy", "VQAv2Accuracy", "VizWizAccuracy", "vqa_server_accuracy"]


def vqa_server_accuracy(answer: str, gts: Sequence[str]) -> float:
    """``vqaEval.py`` on one question: whitespace cleanup, then steps 3-4 on prediction and GT *only if the
    GT answers are not unanimous* (a unanimous GT is compared as stored, not even lower-cased)."""
    answer = strip_whitespace(answer)
    gts = [strip_whitespace(g) for g in gts]
    if len(set(gts)) > 1:
        gts = [vqa_server_normalize(g) for g in gts]
        answer = vqa_server_normalize(answer)
    return soft_accuracy(answer, gts)


def _index(vocab: Sequence[str], values: Sequence[str] | None, what: str) -> list[int]:
    if values is None:
        return []
    lookup = {name: i for i, name in enumerate(vocab)}
    try:
        return [lookup[v] for v in values]
    except KeyError as err:
        raise ValueError(f"unknown {what} {err.args[0]!r}; this metric was built for {list(vocab)}") from None


class VQASoftAccuracy(torchmetrics.Metric):
    """Mean soft accuracy (×100) overall and per answer / question type.

    ``update(preds, gts, answer_types=None, question_types=None)`` takes the raw model texts and the ground-truth
    answer lists; the type vocabularies are fixed at construction so the states are plain sum-reduced tensors.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    default_answer_types: tuple[str, ...] = ()

    def __init__(
        self, answer_types: Sequence[str] | None = None, question_types: Sequence[str] = (), **kwargs
    ):
        super().__init__(**kwargs)
        self.answer_types = list(self.default_answer_types if answer_types is None else answer_types)
        self.question_types = list(question_types)
        f64 = torch.float64
        self.add_state("sum_acc", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
        self.add_state("n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("atype_sum", torch.zeros(len(self.answer_types), dtype=f64), dist_reduce_fx="sum")
        self.add_state("atype_n", torch.zeros(len(self.answer_types), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("qtype_sum", torch.zeros(len(self.question_types), dtype=f64), dist_reduce_fx="sum")
        self.add_state(
            "qtype_n", torch.zeros(len(self.question_types), dtype=torch.long), dist_reduce_fx="sum"
        )

    def question_accuracy(self, pred: str, gts: Sequence[str]) -> float:
        raise NotImplementedError

    def update(
        self,
        preds: Sequence[str],
        gts: Sequence[Sequence[str]],
        answer_types: Sequence[str] | None = None,
        question_types: Sequence[str] | None = None,
    ) -> None:
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions but {len(gts)} ground-truth lists")
        accs = [self.question_accuracy(p, g) for p, g in zip(preds, gts)]
        self.sum_acc += float(sum(accs))
        self.n += len(accs)
        groups = (
            (_index(self.answer_types, answer_types, "answer type"), self.atype_sum, self.atype_n),
            (_index(self.question_types, question_types, "question type"), self.qtype_sum, self.qtype_n),
        )
        for ids, sums, counts in groups:
            if ids:
                index = torch.tensor(ids, dtype=torch.long, device=sums.device)
                sums.index_add_(0, index, torch.tensor(accs, dtype=sums.dtype, device=sums.device))
                counts.index_add_(0, index, torch.ones(len(ids), dtype=torch.long, device=sums.device))

    def compute(self) -> dict:
        def pct(total, count):
            return 100.0 * float(total) / int(count) if int(count) else None

        result = {"accuracy": pct(self.sum_acc, self.n), "n": int(self.n)}
        if self.answer_types:
            result["per_answer_type"] = {
                name: pct(self.atype_sum[i], self.atype_n[i])
                for i, name in enumerate(self.answer_types)
                if int(self.atype_n[i])
            }
        if self.question_types:
            result["per_question_type"] = {
                name: pct(self.qtype_sum[i], self.qtype_n[i])
                for i, name in enumerate(self.question_types)
                if int(self.qtype_n[i])
            }
        return result


class VQAv2Accuracy(VQASoftAccuracy):
    """LLaVA's submission conversion (full m4c processor on the text), then :func:`vqa_server_accuracy`."""

    default_answer_types = ("yes/no", "number", "other")

    def question_accuracy(self, pred: str, gts: Sequence[str]) -> float:
        return vqa_server_accuracy(eval_ai_answer(pred), gts)


class VizWizAccuracy(VQASoftAccuracy):
    """LLaVA's upload conversion (m4c processor), then the VizWiz server: the prediction is normalised again
    (with the ``’`` contraction table), the GT answers are compared exactly as stored."""

    default_answer_types = ("other", "yes/no", "number", "unanswerable")

    def question_accuracy(self, pred: str, gts: Sequence[str]) -> float:
        return soft_accuracy(vizwiz_server_normalize(eval_ai_answer(pred)), list(gts))


class TextVQAAccuracy(VQASoftAccuracy):
    """``TextVQAAccuracyEvaluator``: the m4c processor on the prediction and on all GT answers."""

    def question_accuracy(self, pred: str, gts: Sequence[str]) -> float:
        return soft_accuracy(eval_ai_answer(pred), [eval_ai_answer(g) for g in gts])


class SplitFiles:
    """Mixin of the benchmarks scored on EvalAI for the paper's split and locally on val (VQAv2, VizWiz): the
    question file and image folder follow ``self.split``; an unknown split is an error at construction."""

    QUESTION_FILES: ClassVar[dict[str, str]] = {}
    IMAGE_FOLDERS: ClassVar[dict[str, str]] = {}
    SERVER_SPLITS: ClassVar[dict[str, str]] = {}  # split -> the server that holds its ground truth

    @property
    def scored_on(self) -> str | None:
        return self.SERVER_SPLITS.get(self.split)

    def __post_init__(self) -> None:
        if self.split not in self.QUESTION_FILES:
            raise ValueError(f"{self.name} split must be one of {sorted(self.QUESTION_FILES)}, got {self.split!r}")

    def image_dir(self, data_root: str | Path) -> Path:
        folder = Path(self.image_folder or self.IMAGE_FOLDERS[self.split])
        return folder if folder.is_absolute() else Path(data_root) / folder
