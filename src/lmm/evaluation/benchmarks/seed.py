"""SEED-Bench v1 (19,242 questions; 7B 58.6 = all, image + video).

Files: ``seed_bench/llava-seed-bench.jsonl`` (LLaVA's questions; ``image`` is relative to ``seed_bench/``:
``SEED-Bench-image/…`` or, for video questions, the middle frame in ``SEED-Bench-video-image/…``), ground
truth ``seed_bench/SEED-Bench.json`` (``questions[{question_id, answer, data_type, question_type_id}]`` and
``question_type {name: id}``).

``convert_seed_for_submission.py``: correct iff ``text == answer`` exactly, a missing prediction is wrong;
accuracy per question type, total (micro), image-only and video-only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics

from lmm.evaluation.answers import PredictionsError, index_by
from lmm.evaluation.benchmarks.base import (
    Benchmark,
    ScoreContext,
    read_json,
)

__all__ = ["SEED", "SEEDAccuracy", "convert_seed_for_submission"]

N_TYPES = 12
# SEED-Bench v1: dimensions 1-9 are image questions, 10-12 video questions.
DEFAULT_DATA_TYPES = {i: ("image" if i <= 9 else "video") for i in range(1, N_TYPES + 1)}


def convert_seed_for_submission(records, gt_questions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The upload JSONL rows ``{question_id, prediction}`` in SEED-Bench order (every question needs one)."""
    lookup, _, _ = _lookup(records)
    rows = []
    for question in gt_questions:
        record = lookup(question["question_id"])
        if record is None:
            raise PredictionsError(f"SEED question {question['question_id']!r} has no prediction")
        rows.append({"question_id": question["question_id"], "prediction": record["text"]})
    return rows


def _lookup(records):
    """The official lookup: answers keyed by their question_id (last wins), tried as ``int`` first."""
    results, duplicates = index_by(records, lambda r: r["question_id"])

    def get(question_id):
        try:
            key = int(question_id)
        except (TypeError, ValueError):
            key = question_id
        return results[key] if key in results else results.get(question_id)

    return get, results, duplicates


class SEEDAccuracy(torchmetrics.Metric):
    """Correct / count per question type (a 12-tensor, sum-reduced) plus the type → data type map.
    ``update(preds, answers, type_ids)`` with raw texts, gold letters and ``question_type_id`` (1-12)."""

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        type_names: Mapping[int, str] | None = None,
        data_types: Mapping[int, str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.type_names = dict(type_names or {})
        self.data_types = dict(data_types or DEFAULT_DATA_TYPES)
        self.add_state("correct", torch.zeros(N_TYPES, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(N_TYPES, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], answers: Sequence[str], type_ids: Sequence[int]) -> None:
        for text, answer, type_id in zip(preds, answers, type_ids, strict=True):
            if not 1 <= int(type_id) <= N_TYPES:
                raise ValueError(f"SEED question_type_id must be 1..{N_TYPES}, got {type_id!r}")
            self.correct[int(type_id) - 1] += int(text == answer)
            self.count[int(type_id) - 1] += 1

    def compute(self) -> dict[str, Any]:
        def pct(c, n):
            return 100.0 * c / n if n else None

        correct, count = self.correct.tolist(), self.count.tolist()
        per_type = {
            self.type_names.get(i + 1, f"type_{i + 1}"): pct(correct[i], count[i])
            for i in range(N_TYPES)
            if count[i]
        }
        result: dict[str, Any] = {"all": pct(sum(correct), sum(count)), "n": sum(count)}
        for kind in ("image", "video"):
            ids = [i for i in range(N_TYPES) if self.data_types.get(i + 1) == kind]
            result[kind] = pct(sum(correct[i] for i in ids), sum(count[i] for i in ids))
        result["per_type"] = per_type
        return result


@dataclass(frozen=True)
class SEED(Benchmark):
    name: str = "seed"
    default_image_folder: ClassVar[str] = "seed_bench"
    QUESTION_FILE: ClassVar[str] = "seed_bench/llava-seed-bench.jsonl"
    GT_FILE: ClassVar[str] = "seed_bench/SEED-Bench.json"

    def metric(self, data_root: str | Path | None = None) -> SEEDAccuracy:
        if data_root is None:
            return SEEDAccuracy()
        return SEEDAccuracy(*_type_maps(read_json(Path(data_root) / self.GT_FILE)))

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        gt = read_json(data_root / self.GT_FILE)
        lookup, results, duplicates = _lookup(records)
        ctx.duplicates(duplicates)
        columns: dict[str, list[Any]] = defaultdict(list)
        used: set[int] = set()
        missing = 0
        for question in gt["questions"]:
            record = lookup(question["question_id"])
            if record is None:
                missing += 1
            else:
                used.add(id(record))
            columns["preds"].append("" if record is None else record["text"])
            columns["answers"].append(question["answer"])
            columns["type_ids"].append(int(question["question_type_id"]))
        ctx.count("n_questions", len(gt["questions"]))
        ctx.count("n_missing", missing, "{n} question(s) have no prediction and count as wrong")
        ctx.extras(sum(1 for record in results.values() if id(record) not in used))
        result = self._feed(SEEDAccuracy(*_type_maps(gt)), columns)
        return {"score": result["all"], **result}


def _type_maps(gt: Mapping[str, Any]) -> tuple[dict[int, str], dict[int, str]]:
    names = {int(i): name for name, i in gt.get("question_type", {}).items()}
    data_types: dict[int, str] = dict(DEFAULT_DATA_TYPES)
    for question in gt.get("questions", []):
        type_id = int(question["question_type_id"])
        data_types[type_id] = question.get("data_type", data_types.get(type_id, "image"))
    return names, data_types
