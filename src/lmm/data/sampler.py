"""LLaVA's modality/length grouping, ported as pure functions, and the rank-aware batch plan built on it.

Port of ``llava/train/llava_trainer.py`` (``split_to_even_chunks``, ``get_length_grouped_indices``,
``get_modality_length_grouped_indices``; spec §4). The one change is where randomness comes from: LLaVA draws the two
per-modality permutations from the *global* torch RNG (``generator=None``) and the megabatch permutation from the
sampler's generator, which HF leaves as ``None`` too — so all three come from the global RNG, in this order. Here
one explicit :class:`torch.Generator` is threaded through the same three draws in the same order: the result equals
LLaVA's after ``torch.manual_seed(s)`` when the generator is seeded with ``s``.

LLaVA's sampler is built with ``batch_size = per-device micro batch`` and ``world_size = ranks × grad_accum``; HF
then deals consecutive micro-batches round-robin to the ranks, so micro-batch ``j`` of a megabatch goes to rank
``j % ranks`` at accumulation step ``j // ranks``. :func:`plan_batches` makes that explicit and adds what DDP needs:
every rank gets the same number of micro-batches, samples are disjoint, and every global (optimizer-step) batch is
single-modality — LLaVA's last, mixed megabatch is split back into its image part and its text part (see
:func:`plan_batches` for the tail rules).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[float], num_chunks: int) -> list[list[int]]:
    """Split ``indices`` into ``num_chunks`` chunks of about equal total length (LLaVA's greedy rule).

    When ``len(indices)`` is divisible by ``num_chunks`` each index goes to the chunk with the smallest running
    length sum (the first such chunk on ties), and a chunk closes once it holds ``len/num_chunks`` indices;
    otherwise the split is round-robin, ``indices[k::num_chunks]``. ``lengths`` is indexed by the index values."""
    if len(indices) % num_chunks != 0:
        return [list(indices[k::num_chunks]) for k in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    sums: list[float] = [0] * num_chunks
    for index in indices:
        k = sums.index(min(sums))
        chunks[k].append(index)
        sums[k] += lengths[index]
        if len(chunks[k]) == per_chunk:
            sums[k] = math.inf
    return chunks


def get_length_grouped_indices(lengths: Sequence[float], batch_size: int, world_size: int,
                               generator: torch.Generator | None = None) -> list[int]:
    """Random permutation → megabatches of ``world_size·batch_size`` → each sorted by length (descending, stable)
    → :func:`split_to_even_chunks` into ``world_size`` chunks → flattened megabatch by megabatch, chunk by chunk."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    out: list[int] = []
    for start in range(0, len(lengths), megabatch_size):
        megabatch = sorted(perm[start:start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            out.extend(chunk)
    return out


def get_modality_length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                                        generator: torch.Generator | None = None) -> list[int]:
    """LLaVA's ``group_by_modality_length`` order. ``lengths`` are positive for image samples, negative for text-only.

    Single-modality input falls back to :func:`get_length_grouped_indices` (on the signed lengths, as LLaVA does).
    Otherwise each modality is grouped on its own (absolute lengths), cut into megabatches, the last (partial)
    megabatch of each is set aside, the full ones are shuffled together, and ``sorted(last_mm + last_lang)`` is
    appended as the final megabatch."""
    for i, length in enumerate(lengths):
        if length == 0:
            raise ValueError(f"sample {i} has length 0; modality lengths must be non-zero (LLaVA asserts this)")
    if all(x > 0 for x in lengths) or all(x < 0 for x in lengths):
        return get_length_grouped_indices(lengths, batch_size, world_size, generator)
    mm_indices = [i for i, x in enumerate(lengths) if x > 0]
    lang_indices = [i for i, x in enumerate(lengths) if x < 0]
    mm_lengths = [lengths[i] for i in mm_indices]
    lang_lengths = [-lengths[i] for i in lang_indices]
    mm_shuffle = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, generator)]
    lang_shuffle = [lang_indices[i]
                    for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, generator)]
    megabatch_size = world_size * batch_size
    mm_megabatches = [mm_shuffle[i:i + megabatch_size] for i in range(0, len(mm_shuffle), megabatch_size)]
    lang_megabatches = [lang_shuffle[i:i + megabatch_size] for i in range(0, len(lang_shuffle), megabatch_size)]
    additional = mm_megabatches[-1] + lang_megabatches[-1]
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    order = torch.randperm(len(megabatches), generator=generator).tolist()
    megabatches = [megabatches[i] for i in order]
    if additional:
        megabatches.append(sorted(additional))
    return [i for megabatch in megabatches for i in megabatch]


def _last_megabatch_size(n: int, megabatch_size: int) -> int:
    return n - megabatch_size * (math.ceil(n / megabatch_size) - 1) if n else 0


@dataclass
class BatchPlan:
    """One epoch's batches. ``global_batches[g]`` is a list of micro-batch *slots* (lists of item indices); slot
    ``j`` runs on rank ``j % world_size`` at accumulation step ``j // world_size``. Every global batch but the last
    has ``world_size × grad_accum`` slots, so each one is exactly one optimizer step of Lightning's accumulation."""

    world_size: int
    grad_accum: int
    micro_batch_size: int
    global_batches: list[list[list[int]]]
    dropped: list[int] = field(default_factory=list)  # fewer than world_size leftovers that no rank could share
    mixed: int = 0  # global batches holding both modalities (only when a modality has < world×accum samples)

    def rank_batches(self, rank: int) -> list[list[int]]:
        """The micro-batches of ``rank``, in training order."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a world of {self.world_size}")
        return [gb[j] for gb in self.global_batches for j in range(rank, len(gb), self.world_size)]

    @property
    def micro_batches_per_rank(self) -> int:
        return sum(len(gb) // self.world_size for gb in self.global_batches)


def _spread(items: list[int], abs_lengths: Sequence[float], num_slots: int) -> list[list[int]]:
    """Deal ``items`` (at least ``num_slots``) over ``num_slots`` micro-batches, longest first, length-balanced."""
    ordered = sorted(items, key=lambda i: abs_lengths[i], reverse=True)
    return split_to_even_chunks(ordered, abs_lengths, num_slots)


def plan_batches(lengths: Sequence[int], micro_batch_size: int, world_size: int = 1, grad_accum: int = 1,
                 generator: torch.Generator | None = None, group_by_modality: bool = True) -> BatchPlan:
    """Plan one epoch over items ``0..len(lengths)-1`` (signed modality lengths, as LLaVA's).

    The order is LLaVA's (:func:`get_modality_length_grouped_indices` with ``world_size × grad_accum`` chunks), or a
    plain ``randperm`` when grouping is off. Full megabatches become global batches exactly as HF consumes them
    (consecutive micro-batches dealt to ranks round-robin). The partial tail is placed so that every rank gets the
    same number of micro-batches and every optimizer step stays single-modality:

    * LLaVA's final mixed megabatch is split back into its image part and its text part;
    * a part with at least ``world × accum`` samples is its own global batch (``world × accum`` smaller slots);
    * the last smaller part ends the epoch as a shorter global batch (``k < accum`` micro-batches per rank);
    * another smaller part joins the last full global batch of its modality (one extra sample in some slots);
      (the micro-batches are kept as planned); only when a modality has no full global batch at all do the
      leftovers share one final, mixed batch;
    * fewer than ``world_size`` leftover samples cannot be shared by the ranks: they are ``dropped`` (counted).
    """
    if micro_batch_size < 1 or world_size < 1 or grad_accum < 1:
        raise ValueError("micro_batch_size, world_size and grad_accum must be positive")
    n = len(lengths)
    num_slots = world_size * grad_accum
    megabatch_size = num_slots * micro_batch_size
    abs_lengths = [abs(x) for x in lengths]
    n_mm = sum(1 for x in lengths if x > 0)
    mixed_input = group_by_modality and 0 < n_mm < n
    if group_by_modality:
        flat = get_modality_length_grouped_indices(lengths, micro_batch_size, num_slots, generator)
    else:
        flat = torch.randperm(n, generator=generator).tolist()
    if mixed_input:
        tail = _last_megabatch_size(n_mm, megabatch_size) + _last_megabatch_size(n - n_mm, megabatch_size)
        body, tail_items = flat[:n - tail], flat[n - tail:]
        parts = [[i for i in tail_items if lengths[i] > 0], [i for i in tail_items if lengths[i] < 0]]
    else:
        full = (n // megabatch_size) * megabatch_size
        body, parts = flat[:full], [flat[full:]]
    parts = [p for p in parts if p]

    def modality(items: list[int]) -> int:
        return (1 if lengths[items[0]] > 0 else -1) if group_by_modality else 0

    batches = [[body[s + j * micro_batch_size: s + (j + 1) * micro_batch_size] for j in range(num_slots)]
               for s in range(0, len(body), megabatch_size)]
    full_count = len(batches)

    def absorb(part: list[int]) -> bool:
        # fewer than num_slots samples: one more in the slots with the smallest length sums, longest first
        for b in range(full_count - 1, -1, -1):
            if modality(batches[b][0]) == modality(part):
                slots = sorted(range(num_slots), key=lambda j: sum(abs_lengths[i] for i in batches[b][j]))
                for j, i in zip(slots, sorted(part, key=lambda i: abs_lengths[i], reverse=True)):
                    batches[b][j] = batches[b][j] + [i]
                return True
        return False

    small = [p for p in parts if len(p) < num_slots]
    batches += [_spread(p, abs_lengths, num_slots) for p in parts if len(p) >= num_slots]
    pool: list[int] = []
    for k, part in enumerate(small):
        last = k == len(small) - 1
        if last and (pool or len(part) >= world_size):
            pool += part
        elif not absorb(part):
            pool += part
    per_rank = min(grad_accum, math.ceil(len(pool) / (world_size * micro_batch_size)), len(pool) // world_size)
    return finish_plan(BatchPlan(world_size, grad_accum, micro_batch_size, batches), pool, per_rank,
                       lambda items, n: _spread(items, abs_lengths, n), lengths, group_by_modality)


def finish_plan(plan: BatchPlan, pool: list[int], per_rank: int, spread: Callable[[list[int], int], list[list[int]]],
                lengths: Sequence[int], group_by_modality: bool) -> BatchPlan:
    """End ``plan``'s epoch with the leftover ``pool``: one shorter global batch of ``per_rank`` micro-batches per
    rank (``spread(pool, slots)``), or — ``per_rank`` 0, fewer samples than ranks — dropped and counted; then count
    the global batches that mix modalities."""
    if per_rank > 0:
        plan.global_batches.append(spread(pool, plan.world_size * per_rank))
    else:
        plan.dropped = sorted(pool)
    if group_by_modality:
        plan.mixed = sum(1 for gb in plan.global_batches if len({lengths[i] > 0 for slot in gb for i in slot}) > 1)
    return plan
