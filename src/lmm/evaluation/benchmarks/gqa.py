"""GQA testdev-balanced (12,578 questions; 7B 62.0).

Files: ``gqa/llava_gqa_testdev_balanced.jsonl`` (questions, string ids), images ``gqa/data/images/``, ground
truth ``gqa/data/testdev_balanced_questions.json`` (LLaVA's ``GQADIR``, where the official ``eval.py`` runs;
``gqa/testdev_balanced_questions.json`` is accepted too).

Scoring = ``convert_gqa_for_eval.py`` (``text.rstrip('.').lower()``) + the official ``eval.py --tier
testdev_balanced`` as patched by LLaVA: exact string equality averaged over ``isBalanced`` questions, every
balanced question must have a prediction. Validity/plausibility (need the unreleased choices file), consistency
and the distribution score are not computed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from lmm.evaluation.answers import PredictionsError, index_by
from lmm.evaluation.benchmarks.base import (
    Benchmark,
    ScoreContext,
    find_file,
    read_json,
)

__all__ = ["GQA", "GQAAccuracy", "gqa_hit", "gqa_prediction", "gqa_steps"]

STRUCTURAL = ("verify", "query", "choose", "logical", "compare")
SEMANTIC = ("rel", "attr", "obj", "cat", "global")


def gqa_prediction(text: str) -> str:
    """``convert_gqa_for_eval.py``: strip trailing periods, lowercase; nothing else."""
    return text.rstrip(".").lower()


def gqa_hit(text: str, gold: str) -> int:
    """The official ``eval.py``'s score of one question: 1 when the converted prediction equals the answer."""
    return int(gqa_prediction(text) == gold)


def gqa_steps(question: dict[str, Any]) -> int:
    """``getStepsNum``: semantic operations, not counting exist / ``query: name`` / ``choose name`` steps."""
    skip = ("exist", "query: name", "choose name")
    ops = (f"{op['operation']}: {op['argument']}" for op in question.get("semantic", []))
    return sum(1 for op in ops if not any(s in op for s in skip))


class GQAAccuracy(torchmetrics.Metric):
    """Exact-match accuracy (×100) with GQA's breakdowns. ``update(preds, golds, structural, semantic, steps,
    words)`` takes raw model texts; fixed type vocabularies are sum-reduced tensors, the open-ended step and word
    counts are cat-reduced lists grouped in ``compute``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        for name, size in (("structural", len(STRUCTURAL)), ("semantic", len(SEMANTIC))):
            self.add_state(f"{name}_correct", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{name}_total", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("hits", "steps", "words"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(
        self,
        preds: Sequence[str],
        golds: Sequence[str],
        structural: Sequence[str],
        semantic: Sequence[str],
        steps: Sequence[int],
        words: Sequence[int],
    ) -> None:
        hits = [gqa_hit(p, g) for p, g in zip(preds, golds, strict=True)]
        self.correct += sum(hits)
        self.total += len(hits)
        for vocab, values, name in ((STRUCTURAL, structural, "structural"), (SEMANTIC, semantic, "semantic")):
            unknown = set(values) - set(vocab)
            if unknown:
                raise ValueError(f"unknown GQA {name} type(s) {sorted(unknown)}; expected {list(vocab)}")
            index = torch.tensor(
                [vocab.index(v) for v in values], dtype=torch.long, device=self.correct.device
            )
            getattr(self, f"{name}_correct").index_add_(0, index, torch.tensor(hits, device=index.device))
            getattr(self, f"{name}_total").index_add_(0, index, torch.ones_like(index))
        device = self.correct.device
        self.hits.append(torch.tensor(hits, dtype=torch.long, device=device))
        self.steps.append(torch.tensor(list(steps), dtype=torch.long, device=device))
        self.words.append(torch.tensor(list(words), dtype=torch.long, device=device))

    def compute(self) -> dict[str, Any]:
        def pct(c, n):
            return 100.0 * int(c) / int(n) if int(n) else None

        s_correct, s_total = self.structural_correct, self.structural_total
        is_open = STRUCTURAL.index("query")
        binary_c = int(s_correct.sum()) - int(s_correct[is_open])
        binary_n = int(s_total.sum()) - int(s_total[is_open])
        result: dict[str, Any] = {
            "accuracy": pct(self.correct, self.total),
            "binary": pct(binary_c, binary_n),
            "open": pct(s_correct[is_open], s_total[is_open]),
            "n": int(self.total),
        }
        for name, vocab in (("structural", STRUCTURAL), ("semantic", SEMANTIC)):
            c, n = getattr(self, f"{name}_correct"), getattr(self, f"{name}_total")
            result[f"per_{name}"] = {t: pct(c[i], n[i]) for i, t in enumerate(vocab) if int(n[i])}
        hits = dim_zero_cat(self.hits) if len(self.hits) else torch.zeros(0, dtype=torch.long)
        for name in ("steps", "words"):
            keys = dim_zero_cat(getattr(self, name)) if len(getattr(self, name)) else torch.zeros(0)
            groups: dict[int, list[int]] = defaultdict(list)
            for key, hit in zip(keys.tolist(), hits.tolist()):
                groups[int(key)].append(hit)
            result[f"per_{name}"] = {
                str(k): {"accuracy": 100.0 * sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())
            }
        return result


@dataclass(frozen=True)
class GQA(Benchmark):
    name: str = "gqa"
    METRIC: ClassVar[type[GQAAccuracy]] = GQAAccuracy
    QUESTION_UNIT: ClassVar[str] = "exact match (1 or 0) of the converted prediction, balanced questions"
    default_image_folder: ClassVar[str] = "gqa/data/images"
    QUESTION_FILE: ClassVar[str] = "gqa/llava_gqa_testdev_balanced.jsonl"
    GT_FILES: ClassVar[tuple[str, ...]] = (
        "gqa/data/testdev_balanced_questions.json",
        "gqa/testdev_balanced_questions.json",
    )

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        gt = read_json(
            find_file(data_root, self.GT_FILES, "GQA ground truth (testdev_balanced_questions.json)")
        )
        # The converter writes LLaVA's question_id as questionId; GQA ids are strings, so compare as strings.
        texts, duplicates = index_by(records, lambda r: str(r["question_id"]))
        ctx.duplicates(duplicates)
        ctx.extras(sum(1 for qid in texts if qid not in gt))
        balanced = {qid: q for qid, q in gt.items() if q["isBalanced"]}
        missing = [qid for qid in balanced if qid not in texts]
        if missing:
            raise PredictionsError(
                f"{len(missing)} balanced GQA question(s) have no prediction (e.g. {missing[:3]}); the official "
                "eval.py raises 'missing predictions'"
            )
        ctx.count("n_questions", len(balanced))
        ctx.count("n_missing", 0)
        columns: dict[str, list[Any]] = defaultdict(list)
        for qid, q in balanced.items():
            columns["preds"].append(texts[qid]["text"])
            columns["golds"].append(q["answer"])
            columns["structural"].append(q["types"]["structural"])
            columns["semantic"].append(q["types"]["semantic"])
            columns["steps"].append(gqa_steps(q))
            columns["words"].append(len(q["question"].split()))
        ctx.per_question(list(balanced), [gqa_hit(p, g) for p, g in zip(columns["preds"], columns["golds"])])
        result = self._feed(GQAAccuracy(), columns)
        return {"score": result.pop("accuracy"), **result}
