"""Paired per-question differences and their hierarchical bootstrap (seeds, then questions within a seed).

Used by the Table-2-in-miniature report (:mod:`lmm.tracking.table2_mini`): a transition a→b is, per seed, the
per-question difference b − a over the questions both runs answered; its Δ is the mean over seeds of the mean
difference, and its interval comes from resampling seeds with replacement and, within each drawn seed, questions
with replacement (the same indices for a and b, since the differences are already paired). numpy only, seeded, so
a report is the same every time it is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
CHUNK = 2_000_000  # index draws held in memory at once


@dataclass(frozen=True)
class Interval:
    """A Δ in points (×100 of a per-question score in [0, 1]) with its bootstrap interval; ``n_questions`` = the
    paired questions per seed, in seed order."""

    point: float
    low: float
    high: float
    n_seeds: int
    n_questions: tuple[int, ...]

    def side(self) -> int:
        """+1 when the interval lies above 0, −1 below, 0 when it contains 0."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


def paired_differences(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    """b − a for every question key both runs scored, in ``a``'s key order."""
    keys = [k for k in a if k in b]
    if not keys:
        raise ValueError(f"no question in common between the two runs ({len(a)} and {len(b)} questions)")
    return np.array([float(b[k]) - float(a[k]) for k in keys])


def hierarchical_bootstrap(diffs: Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int | Sequence[int] = 0,
                           level: float = LEVEL, scale: float = 100.0) -> Interval:
    """Δ = mean over seeds of the mean paired difference, × ``scale``; interval = the (1 ± level) / 2 percentiles
    of ``n_boot`` replicates, each drawing the seeds with replacement and, within every drawn seed, its questions
    with replacement. With one seed the seed draw is trivial (only questions are resampled)."""
    diffs = [np.asarray(d, dtype=float) for d in diffs]
    if not diffs or any(d.size == 0 for d in diffs):
        raise ValueError("the bootstrap needs at least one seed with at least one paired question")
    rng = np.random.default_rng(seed)
    k = len(diffs)
    drawn = rng.integers(0, k, size=(n_boot, k)).ravel()   # which seed fills each slot of each replicate
    slot_means = np.empty(drawn.size)
    for s, d in enumerate(diffs):
        slots = np.flatnonzero(drawn == s)
        step = max(1, CHUNK // d.size)
        for i in range(0, slots.size, step):
            part = slots[i:i + step]
            slot_means[part] = d[rng.integers(0, d.size, size=(part.size, d.size))].mean(axis=1)
    replicates = scale * slot_means.reshape(n_boot, k).mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    point = scale * float(np.mean([d.mean() for d in diffs]))
    return Interval(point=point, low=float(low), high=float(high), n_seeds=k,
                    n_questions=tuple(int(d.size) for d in diffs))
