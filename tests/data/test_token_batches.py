"""Token-budget micro-batches (lmm.data.token_batches): every sample once, budgets kept, steps single-modality,
ranks equal — in the planner and through the shard DataModule."""

import random

import pytest
import torch

from lmm.data.datamodule import build_datamodule
from lmm.data.shards import convert
from lmm.data.token_batches import batch_cost, plan_token_batches
from lmm.text.templates import get_template
from lmm.text.tokenize import IMAGE_TOKEN_INDEX

from .conftest import N_FINETUNE


def mix(n, seed=0, text_share=0.2):
    """A 665K-like length mix: signed modality lengths and token lengths (long image samples, short text ones)."""
    rng = random.Random(seed)
    lengths, tokens = [], []
    for _ in range(n):
        image = rng.random() > text_share
        t = rng.randint(20, 400) + (64 if image else 0)
        lengths.append(t if image else -t)
        tokens.append(t)
    return lengths, tokens


@pytest.mark.parametrize("world,accum,packed", [(1, 1, True), (2, 2, True), (4, 1, False), (2, 3, False)])
def test_plan_keeps_every_sample_once_the_budget_and_single_modality_steps(world, accum, packed):
    lengths, tokens = mix(500, seed=world + accum)
    budget = 1024
    plan = plan_token_batches(lengths, tokens, budget, world, accum, torch.Generator().manual_seed(0), True, packed)
    planned = [i for gb in plan.global_batches for slot in gb for i in slot]
    assert sorted(planned + plan.dropped) == list(range(500)) and len(plan.dropped) < world
    *full, last = plan.global_batches
    for gb in full:
        assert len(gb) == world * accum
        assert len({lengths[i] > 0 for slot in gb for i in slot}) == 1  # one modality per optimizer step
    assert len(last) % world == 0 and 0 < len(last) <= world * accum and plan.mixed <= 1
    for gb in full:  # the budget holds wherever a slot has more than one sample
        for slot in gb:
            assert len(slot) == 1 or batch_cost([tokens[i] for i in slot], packed) <= budget
    counts = {len(plan.rank_batches(r)) for r in range(world)}
    assert len(counts) == 1 and counts.pop() == plan.micro_batches_per_rank
    # about equal cost: the full steps' micro-batches use most of the budget
    used = [batch_cost([tokens[i] for i in slot], packed) for gb in full for slot in gb]
    assert sum(used) / len(used) > 0.6 * budget


def test_plan_is_seeded_and_packed_cost_fits_more_than_padded():
    lengths, tokens = mix(400, seed=5)
    plan = lambda seed, packed=True: plan_token_batches(lengths, tokens, 900, 2, 1,  # noqa: E731
                                                        torch.Generator().manual_seed(seed), True, packed)
    assert plan(1).global_batches == plan(1).global_batches != plan(2).global_batches
    assert plan(1, packed=True).micro_batches_per_rank < plan(1, packed=False).micro_batches_per_rank
    assert batch_cost([3, 5, 2], packed=True) == 10 and batch_cost([3, 5, 2], packed=False) == 15


def test_over_long_samples_stand_alone_and_tiny_tails_are_dropped_and_counted():
    plan = plan_token_batches([500, 10, 10], [500, 10, 10], 100, 1, 1, torch.Generator().manual_seed(0))
    assert sorted(map(sorted, (s for gb in plan.global_batches for s in gb))) == [[0], [1, 2]]
    plan = plan_token_batches([10, 10, 10], [10, 10, 10], 1000, 4, 1, torch.Generator().manual_seed(0))
    assert plan.global_batches == [] and plan.dropped == [0, 1, 2]
    with pytest.raises(ValueError, match="token lengths"):
        plan_token_batches([1, 2], [1], 10)


@pytest.fixture(scope="module")
def counted_shards(syn, tiny_tokenizer, tmp_path_factory):
    """The twin converted with the tokenizer: the manifest holds exact token counts."""
    out = tmp_path_factory.mktemp("counted")
    convert(syn["finetune"], syn["images"], out, shard_size=16, rules="synthetic", tokenizer=tiny_tokenizer,
            template=get_template("vicuna_v1"), echo=lambda s: None)
    return out


@pytest.mark.parametrize("packed", [True, False])
def test_datamodule_batches_hold_the_token_budget(counted_shards, processor, tiny_tokenizer, packed):
    image_tokens, budget, world, accum = 16, 600, 2, 2
    per_rank = []
    for rank in range(world):
        dm = build_datamodule({"num_workers": 0, "finetune": {"shards": str(counted_shards)}}, "finetune",
                              processor, 4, accum, tiny_tokenizer.pad_token_id, 0, num_image_tokens=image_tokens,
                              max_length=2048, rank=rank, world_size=world, micro_batch_tokens=budget, packed=packed)
        dm.setup("fit")
        per_rank.append(list(dm.train_dataloader()))
    assert len(per_rank[0]) == len(per_rank[1]) == dm.micro_batches_per_epoch
    ids = [i for batches in per_rank for b in batches for i in b.ids]
    assert len(ids) == len(set(ids)) == N_FINETUNE - len(dm.plan(0).dropped)
    over = 0
    for batches in per_rank:
        for b in batches[:-accum]:  # the epoch's last step is the tail's
            spliced = (b.attention_mask.sum(1) + (b.input_ids == IMAGE_TOKEN_INDEX).sum(1) * (image_tokens - 1))
            cost = batch_cost(spliced.tolist(), packed)
            over += len(b) > 1 and cost > budget
    assert over == 0
    sizes = [len(b) for batches in per_rank for b in batches]
    assert max(sizes) > 2 * min(sizes)  # the sample count follows the length
