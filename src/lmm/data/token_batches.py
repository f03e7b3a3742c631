"""Token-budget micro-batches: a micro-batch holds up to ``max_tokens`` tokens instead of a fixed sample count.

With a fixed sample count a micro-batch of long samples costs many times one of short ones (memory is set by the
longest batch of the epoch); with a budget every micro-batch costs about the same. The cost of a micro-batch is what
the LLM runs: the sum of its samples' lengths when packed (padding-free), ``count × longest`` when padded.

The optimizer step keeps its shape — ``world × accumulation`` micro-batches, slot ``j`` on rank ``j % world`` (as
:class:`~lmm.data.sampler.BatchPlan`) — so what varies with length is the number of samples per step, as with any
token-budget batching (fairseq's ``max_tokens``, packed SFT in LLaMA-Factory). Per modality, as LLaVA groups them:

1. a random permutation (the plan's generator), cut into windows of about ``WINDOW × max_tokens`` tokens;
2. each window packed first-fit decreasing into micro-batches (a sample longer than the budget is a micro-batch of
   its own); micro-batches under half the budget go round again with the next window, so all but the last are full;
3. ``world × accum`` consecutive micro-batches are one global batch; the full global batches of both modalities
   are shuffled together (every optimizer step single-modality).

Tails: a modality's leftover samples that still fill ``world × accum`` slots become one more global batch (spread
longest-first onto the slot with the fewest tokens); what is left ends the epoch as one shorter global batch of
``k ≤ accum`` micro-batches per rank (mixed only when both modalities leave something), or — fewer samples than
ranks — is dropped and counted, as in :func:`~lmm.data.sampler.plan_batches`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lmm.common import first_fit_decreasing
from lmm.data.sampler import BatchPlan, finish_plan

WINDOW = 16  # budgets of samples packed together: enough choice for full micro-batches, still a local shuffle


def batch_cost(lengths: Sequence[int], packed: bool) -> int:
    """Tokens the LLM runs for a micro-batch of these lengths: their sum packed, ``count × longest`` padded."""
    return sum(lengths) if packed else len(lengths) * max(lengths, default=0)


def _fill(items: list[int], tokens: Sequence[int], max_tokens: int, packed: bool) -> list[list[int]]:
    """First-fit decreasing: each item, longest first, into the first micro-batch it fits in (cost ≤
    ``max_tokens``), else a new one; a sample longer than the budget stands alone."""
    def fits(b: list[int], total: int, i: int) -> bool:  # a bin's first item is its longest
        return (total + tokens[i] if packed else (len(b) + 1) * tokens[b[0]]) <= max_tokens

    return first_fit_decreasing(items, tokens.__getitem__, fits)


def spread_tokens(items: list[int], tokens: Sequence[int], num_slots: int) -> list[list[int]]:
    """Deal ``items`` (at least ``num_slots``) longest first, each onto the slot with the fewest tokens so far."""
    slots: list[list[int]] = [[] for _ in range(num_slots)]
    sums = [0] * num_slots
    for i in sorted(items, key=lambda i: tokens[i], reverse=True):
        k = sums.index(min(sums))
        slots[k].append(i)
        sums[k] += tokens[i]
    return slots


def _modality_batches(items: list[int], tokens: Sequence[int], max_tokens: int, num_slots: int, packed: bool,
                      generator: torch.Generator | None) -> tuple[list[list[list[int]]], list[int]]:
    """Full global batches of one modality, and the samples of its incomplete tail."""
    perm = [items[k] for k in torch.randperm(len(items), generator=generator).tolist()]
    micro: list[list[int]] = []
    window: list[int] = []
    acc = 0
    for pos, i in enumerate(perm):
        window.append(i)
        acc += tokens[i]
        last = pos == len(perm) - 1
        if acc >= WINDOW * max_tokens or last:
            bins = _fill(window, tokens, max_tokens, packed)
            # micro-batches under half the budget go round again with the next window's samples
            low = [not last and batch_cost([tokens[i] for i in b], packed) < max_tokens // 2 for b in bins]
            micro += [b for b, lo in zip(bins, low) if not lo]
            window = [i for b, lo in zip(bins, low) if lo for i in b]
            acc = sum(tokens[i] for i in window)
    full = len(micro) // num_slots * num_slots
    batches = [micro[s:s + num_slots] for s in range(0, full, num_slots)]
    return batches, [i for mb in micro[full:] for i in mb]


def plan_token_batches(lengths: Sequence[int], tokens: Sequence[int], max_tokens: int, world_size: int = 1,
                       grad_accum: int = 1, generator: torch.Generator | None = None,
                       group_by_modality: bool = True, packed: bool = True) -> BatchPlan:
    """Plan one epoch over items ``0..len(lengths)-1`` with micro-batches of at most ``max_tokens`` tokens.

    ``lengths`` are LLaVA's signed modality lengths (the sign says image / text-only), ``tokens`` each sample's
    length in tokens after the splice (image tokens included, capped at the model's ``max_length``)."""
    if max_tokens < 1 or world_size < 1 or grad_accum < 1:
        raise ValueError("max_tokens, world_size and grad_accum must be positive")
    if len(tokens) != len(lengths):
        raise ValueError(f"{len(lengths)} modality lengths but {len(tokens)} token lengths")
    tokens = [max(int(t), 1) for t in tokens]
    num_slots = world_size * grad_accum
    if group_by_modality:
        groups = [[i for i, x in enumerate(lengths) if x > 0], [i for i, x in enumerate(lengths) if x < 0]]
    else:
        groups = [list(range(len(lengths)))]
    batches: list[list[list[int]]] = []
    tails: list[list[int]] = []
    for items in (g for g in groups if g):
        full, tail = _modality_batches(items, tokens, max_tokens, num_slots, packed, generator)
        batches += full
        tails.append(tail)
    order = torch.randperm(len(batches), generator=generator).tolist()
    batches = [batches[k] for k in order]
    tails = [t for t in tails if t]
    pool: list[int] = []
    for k, tail in enumerate(tails):
        if k < len(tails) - 1 and len(tail) >= num_slots:
            batches.append(spread_tokens(tail, tokens, num_slots))  # a whole single-modality step of its own
        else:
            pool += tail
    per_rank = min(grad_accum, math.ceil(sum(tokens[i] for i in pool) / (world_size * max_tokens)),
                   len(pool) // world_size)
    return finish_plan(BatchPlan(world_size, grad_accum, 0, batches), pool, per_rank,
                       lambda items, n: spread_tokens(items, tokens, n), lengths, group_by_modality)
