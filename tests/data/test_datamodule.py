"""The shard DataModule: exact selection, LLaVA grouping per global batch, ranks, prompt policy, resume mid-epoch."""

import math
from collections import Counter

import pytest

from lmm.data.manifest import Manifest
from lmm.data.shards import convert
from lmm.text.prompts import SHORT_ANSWER
from lmm.text.tokenize import IMAGE_TOKEN_INDEX

from .conftest import N_FINETUNE
from .helpers import Recorder, modality, trainer


def epoch_batches(dm, epoch=0):
    dm.setup("fit")
    dm.set_epoch(epoch)
    return list(dm.train_dataloader())


def test_one_epoch_visits_every_sample_once_in_the_same_order_for_any_worker_count(make_dm, shard_dir):
    a = epoch_batches(make_dm(micro_batch_size=4, num_workers=0))
    b = epoch_batches(make_dm(micro_batch_size=4, num_workers=2))
    ids = [i for batch in a for i in batch.ids]
    assert sorted(ids) == sorted(Manifest.load(shard_dir).ids) and len(ids) == N_FINETUNE
    assert [x.ids for x in a] == [x.ids for x in b]
    assert all(0 < len(x) <= 5 for x in a)  # micro-batch 4 (+1 where a tail sample joined)
    assert all(x.pixel_values is None or x.pixel_values.shape[1:] == (3, 28, 28) for x in a)


def test_subsample_03_is_exact_identical_across_worker_counts_and_keeps_proportions(make_dm, syn, tmp_path):
    # converted with 2 workers and a different shard size, read with 0 and 2 loader workers
    other = tmp_path / "other"
    convert(syn["finetune"], syn["images"], other, workers=2, shard_size=7, rules="synthetic", echo=lambda s: None)
    got = []
    for shards, workers in ((None, 0), (other, 2)):
        dm = make_dm(num_workers=workers, shards=shards, subsample=0.3, subsample_seed=3)
        got.append(sorted(i for batch in epoch_batches(dm) for i in batch.ids))
    assert got[0] == got[1] and len(got[0]) == round(0.3 * N_FINETUNE)
    full = Counter(i.split("-")[0] for i in Manifest.load(other).ids)
    sub = Counter(i.split("-")[0] for i in got[0])
    for source, n in full.items():
        assert sub[source] in (math.floor(0.3 * n), math.ceil(0.3 * n))
    dm4 = make_dm(subsample=0.3, subsample_seed=4)  # another seed, another subset of the same size
    dm4.setup("fit")
    assert sorted(dm4.manifest.ids[i] for i in dm4.selected) != got[0] and len(dm4.selected) == len(got[0])


@pytest.mark.parametrize("policy", ["keep", "strip"])
def test_format_prompt_policy_for_vqav2(make_dm, tiny_tokenizer, policy):
    dm = make_dm(sources={"vqav2": {"format_prompt": policy}})
    n_vqa = 0
    for batch in epoch_batches(dm):
        for row, source, mask in zip(batch.input_ids, batch.sources, batch.attention_mask):
            text = tiny_tokenizer.decode([t for t in row[mask.bool()].tolist() if t != IMAGE_TOKEN_INDEX])
            if source == "vqav2":
                n_vqa += 1
                assert (SHORT_ANSWER in text) == (policy == "keep"), text
            else:
                assert SHORT_ANSWER not in text
    assert n_vqa > 100


@pytest.mark.parametrize("world,accum", [(1, 2), (2, 2), (2, 1)])
def test_global_batches_are_single_modality_and_ranks_get_equal_disjoint_batches(make_dm, world, accum):
    per_rank = [epoch_batches(make_dm(micro_batch_size=3, grad_accum=accum, rank=r, world_size=world,
                                      num_workers=r % 2)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    ids = [i for b in per_rank for batch in b for i in batch.ids]
    assert len(ids) == len(set(ids)) == N_FINETUNE
    steps = len(per_rank[0]) // accum + (len(per_rank[0]) % accum > 0)
    for s in range(steps):  # one optimizer step = accum micro-batches on every rank
        mods = {modality(row) for b in per_rank for batch in b[s * accum:(s + 1) * accum] for row in batch.input_ids}
        assert len(mods) == 1, (s, mods)


def test_grouping_off_gives_plain_shuffle(make_dm):
    dm = make_dm(group_by_modality_length=False, micro_batch_size=8)
    batches = epoch_batches(dm)
    mixed = sum(len({modality(r) for r in b.input_ids}) > 1 for b in batches)
    assert mixed > 0  # a plain shuffle mixes modalities within micro-batches
    assert sorted(i for b in batches for i in b.ids) == sorted(dm.manifest.ids)


def test_epochs_reshuffle_and_counts(make_dm, tmp_path):
    dm = make_dm(micro_batch_size=4)
    rec = Recorder()
    trainer(tmp_path, max_epochs=2).fit(rec, datamodule=dm)
    e0 = [i for mb, e in zip(rec.seen, rec.epochs) if e == 0 for i in mb]
    e1 = [i for mb, e in zip(rec.seen, rec.epochs) if e == 1 for i in mb]
    assert sorted(e0) == sorted(e1) and len(e0) == N_FINETUNE and e0 != e1
    c = dm.counts()
    assert c["data/planned"] == c["data/trained"] == 2 * N_FINETUNE and c["data/skipped"] == 0
    assert c["data/records_in"] == c["data/converted"] == c["data/selected"] == N_FINETUNE


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_without_repeats_or_skips(make_dm, tmp_path, workers):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def dm():
        return make_dm(micro_batch_size=4, grad_accum=2, num_workers=workers)

    full = Recorder()
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=9, save_top_k=-1, filename="{step}")
    trainer(tmp_path / "full", max_epochs=2, accumulate_grad_batches=2, enable_checkpointing=True,
            callbacks=[ckpts]).fit(full, datamodule=dm())
    per_epoch = len(full.seen) // 2
    assert per_epoch > 18 and sorted(i for mb in full.seen[:per_epoch] for i in mb) == sorted(dm_ids(make_dm))
    # a checkpoint taken mid-epoch (optimizer step 9 = micro-batch 18 of epoch 0) continues at micro-batch 18
    resumed = Recorder()
    dm2 = dm()
    trainer(tmp_path / "b", max_epochs=2, accumulate_grad_batches=2).fit(
        resumed, datamodule=dm2, ckpt_path=tmp_path / "ck" / "step=9.ckpt")
    assert resumed.seen == full.seen[18:]
    assert dm2.counts()["data/trained"] == 2 * N_FINETUNE  # restored progress + what this run trained
    # a run stopped by max_steps and saved: the next run continues the data where it stopped
    first = Recorder()
    t1 = trainer(tmp_path / "a", max_steps=9, accumulate_grad_batches=2)
    t1.fit(first, datamodule=dm())
    t1.save_checkpoint(tmp_path / "stop.ckpt")
    second = Recorder()
    trainer(tmp_path / "c", max_epochs=3, accumulate_grad_batches=2).fit(second, datamodule=dm(),
                                                                          ckpt_path=tmp_path / "stop.ckpt")
    assert first.seen == full.seen[:18] and second.seen[: 2 * per_epoch - 18] == full.seen[18:]
    # a checkpoint of another plan is refused
    with pytest.raises(ValueError, match="another selection or batch plan"):
        trainer(tmp_path / "d", max_epochs=1, accumulate_grad_batches=2).fit(
            Recorder(), datamodule=make_dm(micro_batch_size=2, grad_accum=2), ckpt_path=tmp_path / "stop.ckpt")


def dm_ids(make_dm):
    dm = make_dm()
    dm.setup("fit")
    return dm.manifest.ids


def test_state_dict_without_a_trainer(make_dm):
    dm = make_dm(micro_batch_size=4)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    head = [next(it).ids for _ in range(5)]
    state = dm.state_dict()
    assert state["epoch"] == 0 and state["position"] == 5 and state["progress"]["trained"] == 20
    rest = make_dm(micro_batch_size=4)
    rest.load_state_dict(state)
    tail = [b.ids for b in rest.train_dataloader()]
    assert head + tail == [b.ids for b in epoch_batches(make_dm(micro_batch_size=4))]
