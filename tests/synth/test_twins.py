"""Twins of pretrained backbones: trained once into the cache, saved as transformers checkpoints, loaded through
``from_pretrained`` (lmm.synth.twin_tower / twin_llm)."""

import random

import torch

from lmm.models.build import as_twin, random_twin_config
from lmm.models.llm import build_llm
from lmm.models.vision import build_vision_tower
from lmm.synth import tokenizer_corpus
from lmm.synth.scenes import attribute_targets, make_scene
from lmm.synth.sources import described_conversation
from lmm.synth.twin_llm import pretrain_twin_llm
from lmm.synth.twin_tower import pretrain_twin_tower
from lmm.text.tokenizer import train_tiny_tokenizer


def test_pretrained_tower_twin(tmp_path):
    """A twin block with ``pretrain`` is trained once into the cache, saved as a transformers checkpoint and loaded
    through from_pretrained; a second request finds the cache."""
    assert len({len(attribute_targets(make_scene(random.Random(k), text_prob=0.5))) for k in range(20)}) == 1
    vision = {"kind": "hf", "model_type": "clip", "name_or_path": "openai/clip-vit-large-patch14-336",
              "select_layer": -2, "select_feature": "patch",
              "twin": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "pretrain": {"steps": 3, "batch_size": 4}}}
    rng_state = torch.get_rng_state()
    folder = pretrain_twin_tower(vision, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_state)  # a run starts alike whether the twin was cached or not
    assert (folder / "config.json").exists() and (folder / "lmm_twin_pretrain.json").exists()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert pretrain_twin_tower(vision, tmp_path) == folder and (folder / "config.json").stat().st_mtime_ns == stamp
    loaded = build_vision_tower(**as_twin({**vision, "twin": {**vision["twin"], "checkpoint": str(folder)}}, "vision"))
    torch.manual_seed(0)
    random_twin = build_vision_tower(**random_twin_config(vision))
    assert loaded.num_patches == random_twin.num_patches == 16
    trained = dict(loaded.model.named_parameters())
    assert any(not torch.equal(p, trained[k]) for k, p in random_twin.model.named_parameters())
    x = torch.randn(2, 3, 32, 32)
    assert loaded(x).shape == (2, 16, 32)


def test_pretrained_llm_twin(tmp_path):
    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000)
    conv = described_conversation(random.Random(0))
    assert conv[0][0].split("\n")[0].endswith(".") and all(a for _, a in conv)  # the caption, then the questions
    llm = {"model_type": "llama", "name_or_path": "lmsys/vicuna-7b-v1.5",
           "twin": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "num_key_value_heads": 2, "pretrain": {"steps": 3, "batch_size": 2}}}
    folder = pretrain_twin_llm(llm, tok, "vicuna_v1", tmp_path)
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert pretrain_twin_llm(llm, tok, "vicuna_v1", tmp_path) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    assert pretrain_twin_llm(llm, tok, "llama_2", tmp_path) != folder  # another template, another twin
    loaded = build_llm(**as_twin({**llm, "twin": {**llm["twin"], "checkpoint": str(folder)}}, "llm"))
    assert loaded.config.vocab_size == len(tok) and loaded.config.num_hidden_layers == 1
    assert "pretrain" not in random_twin_config(llm)["config"]


def test_world_resolves_tokenizer_and_pretrained_twins(tmp_path):
    """Before a twin run (model.twin), the world puts the tiny tokenizer's folder and each pretrained twin's cached
    checkpoint into the config; at paper scale (model.twin false) the config is left alone."""
    from omegaconf import OmegaConf

    from lmm.synth.world import prepare_training
    from lmm.training.components import build_tokenizer

    small = {"steps": 1, "batch_size": 2}
    cfg = OmegaConf.create({"paths": {"cache_dir": str(tmp_path)}, "run_stages": ["pretrain"], "data": {},
                            "model": {"twin": True, "max_length": 128, "vision": {
        "kind": "hf", "model_type": "clip", "name_or_path": "openai/clip-vit-large-patch14", "select_layer": -2,
        "twin": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "image_size": 16, "patch_size": 8, "pretrain": small}},
        "llm": {"model_type": "llama", "name_or_path": "lmsys/vicuna-7b-v1.5", "chat_template": "vicuna_v1",
                "twin": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "num_key_value_heads": 2, "pretrain": small}}}})
    paper = cfg.copy()
    paper.model.twin = False
    prepare_training(cfg)
    assert cfg.model.vision.twin.checkpoint.startswith(str(tmp_path / "towers"))
    assert cfg.model.llm.twin.checkpoint.startswith(str(tmp_path / "llms"))
    assert cfg.model.llm.tokenizer.startswith(str(tmp_path / "tokenizers"))
    assert len(build_tokenizer(cfg)) == len(train_tiny_tokenizer(tokenizer_corpus(), 1000, tmp_path)[0])
    prepare_training(paper)
    assert "checkpoint" not in paper.model.vision.twin and "checkpoint" not in paper.model.llm.twin
    assert "tokenizer" not in paper.model.llm
