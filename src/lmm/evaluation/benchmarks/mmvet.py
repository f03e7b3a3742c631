"""MM-Vet (218 questions; 7B 31.1), GPT-graded.

Files: ``mm-vet/llava-mm-vet.jsonl`` (questions, no suffix), images ``mm-vet/images/``, metadata
``mm-vet/mm-vet.json`` (from the official ``mm-vet.zip``: ``{"v1_<n>": {question, answer, capability[]}}``),
grades ``mm-vet/results/<model>_<judge>-grade-<N>runs.json`` (``{"v1_<n>": {model[], content[], score[]}}``).

``mm-vet_evaluator.py``: per run, total = Σscore / #samples × 100 and each capability = Σscore over the samples
having it / their count × 100 (likewise per capability combination); reported = mean over runs, plus the
(population) std of the run totals. A sample without a grade adds 0 but stays in the denominators.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from lmm.evaluation.answers import PredictionsError
from lmm.evaluation.benchmarks.base import (
    Benchmark,
    JudgeNotConfiguredError,
    ScoreContext,
    read_json,
    read_jsonl,
)

__all__ = ["CAPABILITIES", "MMVet", "MMVetScore", "mmvet_key"]

CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
RULE_PREFIX = "rule-"  # the judge name of a rule grader (lmm.evaluation.rule_grader) starts so


def mmvet_key(question_id: Any) -> str:
    """``convert_mmvet_for_eval.py`` names each answer ``v1_<question_id>``."""
    return f"v1_{question_id}"


class MMVetScore(torchmetrics.Metric):
    """``update(scores, capabilities)``: per sample, the grades of each judge run (``[n_runs]``) and its
    capability list. Per-capability sums are sum-reduced tensors; capability combinations are grouped in
    ``compute`` from cat-reduced (bitmask, scores) lists."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_runs: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.n_runs = n_runs
        f64 = torch.float64
        self.add_state("total_sum", torch.zeros(n_runs, dtype=f64), dist_reduce_fx="sum")
        self.add_state("n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("cap_sum", torch.zeros(n_runs, len(CAPABILITIES), dtype=f64), dist_reduce_fx="sum")
        self.add_state("cap_n", torch.zeros(len(CAPABILITIES), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("masks", [], dist_reduce_fx="cat")
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, scores: Sequence[Sequence[float]], capabilities: Sequence[Sequence[str]]) -> None:
        masks = []
        for sample, caps in zip(scores, capabilities, strict=True):
            if len(sample) != self.n_runs:
                raise ValueError(f"expected {self.n_runs} run score(s) per sample, got {len(sample)}")
            unknown = set(caps) - set(CAPABILITIES)
            if unknown:
                raise ValueError(
                    f"unknown MM-Vet capabilities {sorted(unknown)}; expected {list(CAPABILITIES)}"
                )
            row = torch.tensor(list(sample), dtype=torch.float64, device=self.n.device)
            self.total_sum += row
            mask = 0
            for cap in set(caps):
                i = CAPABILITIES.index(cap)
                self.cap_sum[:, i] += row
                self.cap_n[i] += 1
                mask |= 1 << i
            masks.append(mask)
        self.n += len(masks)
        self.masks.append(torch.tensor(masks, dtype=torch.long, device=self.n.device))
        self.scores.append(torch.tensor([list(s) for s in scores], dtype=torch.float64, device=self.n.device))

    def compute(self) -> dict[str, Any]:
        n = int(self.n)
        if n == 0:
            return {"total": None, "n": 0}
        totals = (self.total_sum / n * 100).tolist()
        mean_total = sum(totals) / len(totals)
        result: dict[str, Any] = {
            "total": mean_total,
            "std": (sum((t - mean_total) ** 2 for t in totals) / len(totals)) ** 0.5,  # numpy's default std
            "runs": totals,
            "n": n,
        }
        caps = {}
        for i, cap in enumerate(CAPABILITIES):
            if int(self.cap_n[i]):
                caps[cap] = float((self.cap_sum[:, i] / int(self.cap_n[i]) * 100).mean())
        result["capabilities"] = caps
        groups: dict[int, list[list[float]]] = defaultdict(list)
        masks = dim_zero_cat(self.masks).tolist()
        for mask, row in zip(masks, dim_zero_cat(self.scores).reshape(len(masks), -1).tolist()):
            if mask:
                groups[mask].append(row)
        integrations = {}
        for mask, rows in sorted(groups.items(), key=lambda item: -len(item[1])):
            name = "_".join(cap for i, cap in enumerate(CAPABILITIES) if mask >> i & 1)
            per_run = [sum(r[k] for r in rows) / len(rows) * 100 for k in range(self.n_runs)]
            integrations[name] = sum(per_run) / len(per_run)
        result["integrations"] = integrations
        return result


@dataclass(frozen=True)
class MMVet(Benchmark):
    name: str = "mmvet"
    max_new_tokens: int = 1024
    needs_judge: bool = True

    QUESTION_UNIT: ClassVar[str] = "grade in [0, 1] (mean over the judge runs; ungraded: 0)"
    default_image_folder: ClassVar[str] = "mm-vet/images"
    QUESTION_FILE: ClassVar[str] = "mm-vet/llava-mm-vet.jsonl"
    METADATA: ClassVar[str] = "mm-vet/mm-vet.json"

    def metadata(self, data_root: str | Path) -> dict[str, dict[str, Any]]:
        """``mm-vet.json``: per sample key, the question, the ground truth and the capabilities."""
        return read_json(Path(data_root) / self.METADATA)

    def metric(self, data_root: str | Path | None = None, n_runs: int = 1) -> MMVetScore:
        return MMVetScore(n_runs=n_runs)

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        if not judgments:
            raise JudgeNotConfiguredError(
                "skipped: no judge configured — pass grade files (--judgments results/<model>_<judge>-grade-"
                "<N>runs.json) or produce one with `python -m lmm.evaluation judge mmvet ...`"
            )
        grades = _merge_grades(judgments)
        run_counts = {len(v["score"]) for v in grades.values()}
        if len(run_counts) > 1:
            raise PredictionsError(
                f"MM-Vet grades hold different numbers of runs per sample: {sorted(run_counts)}"
            )
        n_runs = run_counts.pop() if run_counts else 1
        capabilities = self._capabilities(data_root, grades, ctx)
        unknown = [k for k in grades if k not in capabilities]
        if unknown:
            raise PredictionsError(f"grades for samples that are not in MM-Vet: {unknown[:5]}")
        ungraded = [k for k in capabilities if k not in grades]
        ctx.count("n_questions", len(capabilities))
        ctx.count(
            "n_ungraded", len(ungraded), "{n} sample(s) have no grade: they add 0 (as in the official sums)"
        )
        if records:
            answered = {mmvet_key(r["question_id"]) for r in records}
            ctx.count(
                "n_missing", sum(1 for k in capabilities if k not in answered), "{n} question(s) not answered"
            )
        scores = [grades[k]["score"] if k in grades else [0.0] * n_runs for k in capabilities]
        result = self._feed(
            MMVetScore(n_runs), {"scores": scores, "capabilities": list(capabilities.values())}
        )
        judges = sorted({m for v in grades.values() for m in v.get("model", [])})
        rules = [j for j in judges if str(j).startswith(RULE_PREFIX)]
        if rules:
            ctx.warn(f"rule-graded ({', '.join(rules)}: lmm.evaluation.rule_grader), not by GPT-4: not comparable "
                     "to the paper's MM-Vet")
        ctx.per_question(list(capabilities), [sum(s) / len(s) for s in scores])
        return {"score": result.pop("total"), **result, "n_runs": n_runs, "judge": judges}

    def _capabilities(
        self, data_root: Path, grades: Mapping[str, Any], ctx: ScoreContext
    ) -> dict[str, list[str]]:
        """Sample key → capability list, from ``mm-vet.json``; without it, the question file (or the graded
        keys) defines the samples and no capability scores can be given."""
        metadata_path = data_root / self.METADATA
        if metadata_path.is_file():
            return {key: list(value["capability"]) for key, value in self.metadata(data_root).items()}
        question_file = data_root / self.QUESTION_FILE
        keys = (
            [mmvet_key(r["question_id"]) for r in read_jsonl(question_file)]
            if question_file.is_file()
            else []
        )
        source = str(question_file) if keys else "the grade files"
        ctx.warn(f"{metadata_path} not found: no capability scores; the samples are those of {source}")
        return {key: [] for key in (keys or list(grades))}


def _merge_grades(paths: Sequence[str | Path]) -> dict[str, dict[str, list[Any]]]:
    """Grade files in the official format; several files contribute their runs in order."""
    merged: dict[str, dict[str, list[Any]]] = {}
    for path in paths:
        data = read_json(Path(path))
        if not isinstance(data, dict):
            raise PredictionsError(f"{path}: an MM-Vet grade file is a JSON object keyed by sample id")
        for key, value in data.items():
            if not isinstance(value, dict) or not isinstance(value.get("score"), list):
                raise PredictionsError(f"{path}: sample {key!r} has no 'score' list")
            entry = merged.setdefault(key, {"model": [], "content": [], "score": []})
            entry["score"].extend(float(s) for s in value["score"])
            entry["model"].extend(value.get("model", []))
            entry["content"].extend(value.get("content", []))
    return merged
