"""Shared fixtures of the data tests: a small synthetic twin, its shards, a processor and a data-module factory."""

import pytest

from lmm.data.images import ImageTransform
from lmm.data.processor import SampleProcessor
from lmm.data.shards import convert
from lmm.synth.basic import write_synthetic
from lmm.text.templates import get_template

N_FINETUNE = 240


@pytest.fixture(scope="session")
def syn(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn"), n_pretrain=48, n_finetune=N_FINETUNE, image_size=24, seed=0)


@pytest.fixture(scope="session")
def processor(tiny_tokenizer):
    return SampleProcessor(tiny_tokenizer, get_template("vicuna_v1"), ImageTransform(28, "pad"))


@pytest.fixture(scope="session")
def shard_dir(syn, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    convert(syn["finetune"], syn["images"], out, shard_size=16, rules="synthetic", echo=lambda s: None)
    return out


@pytest.fixture
def make_dm(shard_dir, processor, tiny_tokenizer):
    from lmm.data.datamodule import build_datamodule

    def make(micro_batch_size=4, grad_accum=1, seed=0, num_workers=0, rank=None, world_size=None, shards=None,
             **stage):
        cfg = {"num_workers": num_workers, "finetune": {"shards": str(shards or shard_dir), **stage}}
        return build_datamodule(cfg, "finetune", processor, micro_batch_size, grad_accum,
                                tiny_tokenizer.pad_token_id, seed, rank=rank, world_size=world_size)

    return make
