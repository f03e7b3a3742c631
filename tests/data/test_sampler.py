"""The LLaVA grouping port (golden outputs of the official functions) and the rank-aware batch plan's guarantees."""

import random

import pytest
import torch

from lmm.data.sampler import (
    get_length_grouped_indices,
    get_modality_length_grouped_indices,
    plan_batches,
    split_to_even_chunks,
)

# Outputs of llava/train/llava_trainer.py at c121f04, computed offline with torch.manual_seed(seed) and the
# functions' generator=None (the global RNG, as LLaVA trains).
GOLDEN_LENGTHS = [5, -3, 8, 2, -7, 9, 1, -4, 6, 3, -2, 7, 4, -6, 10, -1, 2, 5]
GOLDEN_MODALITY_1234_BS2_WS2 = [5, 12, 2, 8, 11, 3, 0, 9, 4, 15, 13, 10, 1, 6, 7, 14, 16, 17]
GOLDEN_LENGTH_7_BS2_WS2 = [2, 3, 0, 9, 5, 10, 8, 4, 7, 1, 6]


def test_split_to_even_chunks_greedy_and_round_robin():
    # divisible: each index to the chunk with the smallest sum, a chunk closes at size/n
    assert split_to_even_chunks([0, 1, 2, 3, 4, 5], [9, 8, 7, 3, 2, 1], 3) == [[0, 5], [1, 4], [2, 3]]
    # not divisible: round robin
    assert split_to_even_chunks([0, 1, 2, 3, 4], [9, 8, 7, 3, 2], 2) == [[0, 2, 4], [1, 3]]
    # ties go to the first chunk; lengths are indexed by the index values
    assert split_to_even_chunks([3, 1, 2, 0], [5, 5, 5, 5], 2) == [[3, 2], [1, 0]]


def test_golden_outputs_of_the_official_code():
    g = torch.Generator().manual_seed(1234)
    assert get_modality_length_grouped_indices(GOLDEN_LENGTHS, 2, 2, g) == GOLDEN_MODALITY_1234_BS2_WS2
    g = torch.Generator().manual_seed(7)
    assert get_length_grouped_indices([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], 2, 2, g) == GOLDEN_LENGTH_7_BS2_WS2


@pytest.mark.parametrize("seed", [0, 1, 99])
def test_explicit_generator_equals_llavas_global_rng(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([1, -1]) * rng.randint(1, 50) for _ in range(97)]
    torch.manual_seed(seed)
    via_global = get_modality_length_grouped_indices(lengths, 3, 4, None)
    assert get_modality_length_grouped_indices(lengths, 3, 4, torch.Generator().manual_seed(seed)) == via_global
    assert sorted(via_global) == list(range(97))


def test_single_modality_falls_back_and_zero_length_fails():
    g = torch.Generator().manual_seed(3)
    out = get_modality_length_grouped_indices([-4, -2, -9, -1, -3], 2, 1, g)
    assert out == get_length_grouped_indices([-4, -2, -9, -1, -3], 2, 1, torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="length 0"):
        get_modality_length_grouped_indices([3, 0, -2], 1, 1)


def _check_plan(lengths, bs, world, accum, group, seed=0):
    plan = plan_batches(lengths, bs, world, accum, torch.Generator().manual_seed(seed), group)
    slots_full = world * accum
    # every item exactly once (or dropped, fewer than world_size of them)
    seen = [i for gb in plan.global_batches for slot in gb for i in slot]
    assert sorted(seen + plan.dropped) == list(range(len(lengths)))
    assert len(plan.dropped) < world
    # equal micro-batch counts on every rank, none empty, disjoint across ranks
    per_rank = [plan.rank_batches(r) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    assert all(mb for b in per_rank for mb in b)
    sets = [{i for mb in b for i in mb} for b in per_rank]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == len(seen)
    # every global batch but the last is one optimizer step: world × accum micro-batches
    assert all(len(gb) == slots_full for gb in plan.global_batches[:-1])
    if plan.global_batches:
        assert len(plan.global_batches[-1]) % world == 0 and len(plan.global_batches[-1]) <= slots_full
    assert all(len(slot) <= bs + 1 for gb in plan.global_batches for slot in gb)
    return plan


@pytest.mark.parametrize("n_mm,n_lang,bs,world,accum", [
    (100, 37, 4, 2, 2), (64, 64, 4, 2, 2), (17, 9, 2, 2, 1), (50, 3, 3, 2, 2), (31, 29, 5, 3, 1), (40, 12, 1, 4, 3),
    (200, 21, 8, 1, 4),
])
def test_grouped_plan_single_modality_equal_and_disjoint(n_mm, n_lang, bs, world, accum):
    rng = random.Random(n_mm * 1000 + n_lang)
    lengths = [rng.randint(1, 80) for _ in range(n_mm)] + [-rng.randint(1, 80) for _ in range(n_lang)]
    rng.shuffle(lengths)
    plan = _check_plan(lengths, bs, world, accum, True)
    if min(n_mm, n_lang) >= world * accum:
        assert plan.mixed == 0
        for gb in plan.global_batches:
            assert len({lengths[i] > 0 for slot in gb for i in slot}) == 1


def test_full_megabatches_are_consumed_exactly_as_llava():
    rng = random.Random(5)
    lengths = [rng.choice([1, -1]) * rng.randint(1, 30) for _ in range(150)]
    bs, world, accum = 4, 2, 2
    flat = get_modality_length_grouped_indices(lengths, bs, world * accum, torch.Generator().manual_seed(11))
    plan = plan_batches(lengths, bs, world, accum, torch.Generator().manual_seed(11), True)
    m = bs * world * accum
    # HF/accelerate: micro-batch j of a megabatch runs on rank j % world at accumulation step j // world
    for g, gb in enumerate(plan.global_batches[:-3]):
        assert gb == [flat[g * m + j * bs: g * m + (j + 1) * bs] for j in range(world * accum)]
        assert plan.rank_batches(1)[g * accum + 1] == gb[1 * world + 1]


def test_tiny_modality_shares_a_final_mixed_batch_and_leftovers_are_dropped():
    plan = _check_plan([5, 6, 7, -1], 2, 2, 2, True)  # 3 image + 1 text samples: a modality has < world×accum
    assert plan.mixed == 1
    plan = _check_plan([5], 2, 2, 1, True)
    assert plan.dropped == [0] and plan.global_batches == []


@pytest.mark.parametrize("n,bs,world,accum", [(100, 4, 2, 2), (9, 4, 2, 1), (33, 2, 4, 1)])
def test_ungrouped_plan_is_a_plain_shuffle(n, bs, world, accum):
    lengths = [(-1) ** i * (i + 1) for i in range(n)]
    plan = _check_plan(lengths, bs, world, accum, False, seed=4)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(4)).tolist()
    full = (n // (bs * world * accum)) * bs * world * accum
    # full megabatches are consecutive randperm slices; leftovers join them or end the epoch
    for g in range(full // (bs * world * accum)):
        for j, slot in enumerate(plan.global_batches[g]):
            start = g * bs * world * accum + j * bs
            assert slot[:bs] == perm[start:start + bs]


def test_plan_depends_on_the_seed_only():
    lengths = [(-1) ** (i // 3) * (i % 7 + 1) for i in range(80)]
    a = plan_batches(lengths, 4, 2, 1, torch.Generator().manual_seed(1))
    b = plan_batches(lengths, 4, 2, 1, torch.Generator().manual_seed(1))
    c = plan_batches(lengths, 4, 2, 1, torch.Generator().manual_seed(2))
    assert a.global_batches == b.global_batches != c.global_batches


def test_665k_on_8_gpus_takes_llavas_5198_steps():
    # finetune.sh: 8 GPUs × 16, 40,688 text-only samples of 665,298 → 5,198 optimizer steps (spec §4, issue #601)
    n_lang = 40688
    lengths = [-3] * n_lang + [7] * (665298 - n_lang)
    plan = plan_batches(lengths, 16, 8, 1, torch.Generator().manual_seed(0))
    assert len(plan.global_batches) == plan.micro_batches_per_rank == 5198
    assert plan.mixed == 0 and not plan.dropped
