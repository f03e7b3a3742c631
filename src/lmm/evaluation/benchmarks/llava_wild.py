"""LLaVA-Bench-in-the-Wild (24 images, 60 questions; 7B 65.4), GPT-judged.

Files (the HF dataset ``liuhaotian/llava-bench-in-the-wild`` extracted to ``llava-bench-in-the-wild/``):
``questions.jsonl`` (``{question_id, image, text, category}``), ``context.jsonl`` (captions),
``answers_gpt4.jsonl`` (reference answers), ``images/``; judge reviews ``reviews/<model>-eval{1,2,3}.jsonl``
(``{id, question_id, answer1_id, answer2_id, category: llava_bench_*, content, tuple}``).

``summarize_gpt_review.py``: per category and ``all``, the mean (reference, model) score pair rounded to 3
decimals, then ``round(mean_model / mean_ref * 100, 1)`` — a ratio of means. The paper reports the mean of the
``all`` value over 3 judge runs. An unparsable review is stored as ``[-1, -1]`` and the official script still
averages it in; here such reviews are counted and excluded, and the official number is reported alongside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics

from lmm.evaluation.answers import PredictionsError, index_by
from lmm.evaluation.benchmarks.base import (
    Benchmark,
    JudgeNotConfiguredError,
    ScoreContext,
    read_jsonl,
)

__all__ = ["CATEGORIES", "LLaVAWild", "LLaVAWildScore", "relative_score"]

CATEGORIES = ("conv", "detail", "complex")
REVIEW_PREFIX = "llava_bench_"
FAILED = (-1.0, -1.0)


def relative_score(mean_ref: float, mean_model: float) -> float | None:
    """``summarize_gpt_review.py``: both means rounded to 3 decimals, ratio × 100 rounded to 1 decimal
    (``None`` where the official script would divide by zero)."""
    ref = round(mean_ref, 3)
    return round(round(mean_model, 3) / ref * 100, 1) if ref else None


class LLaVAWildScore(torchmetrics.Metric):
    """One judge run. ``update(ref_scores, model_scores, categories)`` with the review tuples (Assistant 1 =
    GPT-4 reference, 2 = model) and categories (``conv``/``detail``/``complex``, with or without the
    ``llava_bench_`` prefix); a ``(-1, -1)`` tuple is a parse failure. Sum-reduced per-category states."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        k = len(CATEGORIES)
        self.add_state("sum_ref", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_model", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_fail", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, ref_scores: Sequence[float], model_scores: Sequence[float], categories: Sequence[str]
    ) -> None:
        for ref, model, category in zip(ref_scores, model_scores, categories, strict=True):
            name = category[len(REVIEW_PREFIX) :] if category.startswith(REVIEW_PREFIX) else category
            if name not in CATEGORIES:
                raise ValueError(f"unknown LLaVA-Bench category {category!r}; expected {list(CATEGORIES)}")
            i = CATEGORIES.index(name)
            if (float(ref), float(model)) == FAILED:
                self.n_fail[i] += 1
            else:
                self.sum_ref[i] += float(ref)
                self.sum_model[i] += float(model)
                self.n[i] += 1

    def compute(self) -> dict[str, Any]:
        def summary(sum_ref: float, sum_model: float, n: int, n_fail: int) -> dict[str, Any]:
            out: dict[str, Any] = {"n": n, "n_parse_failures": n_fail}
            if n:
                out.update(
                    relative=relative_score(sum_ref / n, sum_model / n),
                    ref_score=round(round(sum_ref / n, 3) * 10, 1),
                    model_score=round(round(sum_model / n, 3) * 10, 1),
                )
            if n + n_fail:  # the official summary, which averages the [-1, -1] tuples in
                total = n + n_fail
                ref_all, model_all = (sum_ref - n_fail) / total, (sum_model - n_fail) / total
                out["relative_official"] = relative_score(ref_all, model_all)
            return out

        sums = [t.tolist() for t in (self.sum_ref, self.sum_model, self.n, self.n_fail)]
        result = {
            name: summary(*(s[i] for s in sums))
            for i, name in enumerate(CATEGORIES)
            if sums[2][i] + sums[3][i]
        }
        result["all"] = summary(*(sum(s) for s in sums))
        return result


@dataclass(frozen=True)
class LLaVAWild(Benchmark):
    name: str = "llava_wild"
    METRIC: ClassVar[type[LLaVAWildScore]] = LLaVAWildScore
    max_new_tokens: int = 1024
    needs_judge: bool = True

    default_image_folder: ClassVar[str] = "llava-bench-in-the-wild/images"
    ROOT: ClassVar[str] = "llava-bench-in-the-wild"
    QUESTION_FILE: ClassVar[str] = "llava-bench-in-the-wild/questions.jsonl"

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        if not judgments:
            raise JudgeNotConfiguredError(
                "skipped: no judge configured — pass review files (--judgments reviews/<model>-eval1.jsonl ...) "
                "or produce them with `python -m lmm.evaluation judge llava_wild ...`"
            )
        question_file = data_root / self.QUESTION_FILE
        question_ids = (
            [row["question_id"] for row in read_jsonl(question_file)] if question_file.is_file() else None
        )
        if question_ids is None:
            ctx.warn(f"{question_file} not found: cannot check that the reviews cover every question")
        answers, duplicates = index_by(records, lambda r: r["question_id"])
        ctx.duplicates(duplicates)
        runs, judges, stale, missing = [], set(), 0, 0
        for path in judgments:
            reviews = read_jsonl(Path(path))
            by_question, repeated = index_by(reviews, lambda r: r["question_id"])
            if repeated:
                raise PredictionsError(f"{path}: question(s) reviewed more than once: {repeated[:5]}")
            if question_ids is not None:
                missing += sum(1 for qid in question_ids if qid not in by_question)
            for review in reviews:
                judges.add(review.get("judge_model", "unrecorded"))
                answer = answers.get(review["question_id"])
                if (
                    answer is not None
                    and "answer_id" in answer
                    and review.get("answer2_id") != answer["answer_id"]
                ):
                    stale += 1
            metric = LLaVAWildScore()
            ref, model = zip(*[_pair(review, path) for review in reviews]) if reviews else ((), ())
            runs.append(
                self._feed(
                    metric,
                    {
                        "ref_scores": ref,
                        "model_scores": model,
                        "categories": [r["category"] for r in reviews],
                    },
                )
            )
        if question_ids is not None:
            ctx.count("n_questions", len(question_ids))
        ctx.count("n_missing_reviews", missing, "{n} question review(s) missing across the runs")
        if records:
            ctx.count(
                "n_stale_reviews", stale, "{n} review(s) judged a different answer than the predictions file"
            )
        failures = sum(run["all"]["n_parse_failures"] for run in runs)
        ctx.count(
            "n_parse_failures",
            failures,
            "{n} review(s) could not be parsed ([-1, -1]); excluded from the mean",
        )
        per_run = [run["all"].get("relative") for run in runs]
        return {
            "score": _mean(per_run),
            "score_official_with_failures": _mean([run["all"].get("relative_official") for run in runs]),
            "per_category": {c: _mean([run.get(c, {}).get("relative") for run in runs]) for c in CATEGORIES},
            "runs": runs,
            "n_runs": len(runs),
            "judge": sorted(judges),
        }


def _pair(review: dict[str, Any], path) -> tuple[float, float]:
    pair = review.get("tuple")
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise PredictionsError(f"{path}: review {review.get('id')!r} has no 2-score 'tuple'")
    return float(pair[0]), float(pair[1])


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None
