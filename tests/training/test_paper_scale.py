"""The paper-scale path, faithful to LLaVA's scripts: fp32 master weights under bf16, no clipping, the world size
from the Trainer, no silent random connector, a strategy per stage (ZeRO-2 → ZeRO-3), TF32, the non-finite guard."""

import math

import lightning as L
import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmm.data.batch import Batch
from lmm.training.module import LlavaLitModule, NonFiniteError
from lmm.training.precision import MasterWeightError, check_fp32_masters, resolve_precision, set_tf32

CONF = REPO / "conf"
PAPER_EXPERIMENTS = ["llava_v1_5_7b", "llava_v1_5_13b", "llava_v1_5_7b_lora", "llava_v1_5_13b_hd", "row0_llava"]


def cfg_of(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={REPO}", "paths.output_dir=/tmp/unused", *overrides])


def text_batch(tok, n=2, ids_prefix="s"):
    """A text-only micro-batch whose every token is a target (enough to move the LLM)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (n, 12), generator=g)
    return Batch(ids, torch.ones_like(ids), ids.clone(), None, ids=[f"{ids_prefix}{i}" for i in range(n)])


def fit(module, batches, tmp_path, precision="32-true", steps=None):
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps or len(batches),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


# ---------------------------------------------------------------------------------------- 1. fp32 master weights
def test_bf16_model_trains_fp32_masters_and_a_tiny_update_lands(tiny_model, tiny_tokenizer, tmp_path):
    """A model loaded in bf16 (as paper scale loads Vicuna), bf16-mixed, lr 1e-6: the update must not round away."""
    model = tiny_model.to(torch.bfloat16)
    module = LlavaLitModule(model, ["connector", "llm"], lr=1e-6, warmup_ratio=0.0)
    before = {n: p.detach().float().clone() for n, p in model.llm.named_parameters()}
    trainer = fit(module, [text_batch(tiny_tokenizer)], tmp_path, precision="bf16-mixed")
    assert trainer.global_step == 1
    changed = sum(int((p.detach().float() != before[n]).sum()) for n, p in model.llm.named_parameters())
    total = sum(p.numel() for p in model.llm.parameters())
    assert changed > 0.5 * total, f"only {changed} of {total} LLM weights moved"
    assert all(p.dtype == torch.float32 for p in model.llm.parameters())       # trainable: fp32 masters
    assert all(p.dtype == torch.bfloat16 for p in model.vision.parameters())   # frozen: stays bf16
    state = trainer.optimizers[0].state
    assert state and all(v.dtype == torch.float32 for s in state.values() for v in s.values() if v.dim())


def test_sixteen_bit_masters_are_refused(tiny_model):
    model = tiny_model.to(torch.bfloat16)
    with pytest.raises(MasterWeightError, match="not fp32"):
        check_fp32_masters(model.llm)  # requires_grad, bf16: what plain AdamW under bf16-mixed would step
    with pytest.raises(MasterWeightError, match="bf16-mixed"):
        resolve_precision("bf16-true", accelerator_is_gpu=True)
    assert resolve_precision(None, True) == "bf16-mixed" and resolve_precision(None, False) == "32-true"


# ------------------------------------------------------------------------------- 2, 5, 6: the paper's configs
@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_paper_configs_compose_to_the_official_recipe(name):
    cfg = cfg_of(f"+experiment={name}", "scale=paper")
    pre, fin = cfg.stages.pretrain, cfg.stages.finetune
    assert pre.gradient_clip_val is None and fin.gradient_clip_val is None  # zero2/zero3.json: no clipping
    assert pre.strategy.name == fin.strategy.name == "deepspeed"
    assert pre.strategy.config.zero_optimization.stage == 2 and fin.strategy.config.zero_optimization.stage == 3
    assert cfg.tf32 is True and cfg.trainer.precision is None  # → bf16-mixed on GPU, fp32 masters
    assert cfg.trainer.devices == "auto"  # every visible GPU; the global batch is kept by accumulation


def test_clipping_stays_an_option():
    cfg = cfg_of("+experiment=llava_v1_5_7b", "scale=paper", "stages.finetune.gradient_clip_val=1.0")
    assert cfg.stages.finetune.gradient_clip_val == 1.0 and cfg.stages.pretrain.gradient_clip_val is None


def test_a_stage_can_carry_its_own_strategy():
    cfg = cfg_of("+experiment=llava_v1_5_7b", "scale=paper", "strategy@stages.finetune.strategy=fsdp")
    assert cfg.stages.pretrain.strategy.name == "deepspeed" and cfg.stages.finetune.strategy.name == "fsdp"
    assert cfg.stages.finetune.strategy.activation_checkpointing is True


def test_deepspeed_auto_values_resolve_as_hf_trainer():
    from lmm.training.strategies import resolve_deepspeed_config

    cfg = cfg_of("+experiment=llava_v1_5_7b", "scale=paper")
    z2 = resolve_deepspeed_config(OmegaConf.to_container(cfg.stages.pretrain.strategy.config), 32, 1, 8, 4096)
    z3 = resolve_deepspeed_config(OmegaConf.to_container(cfg.stages.finetune.strategy.config), 16, 1, 8, 4096)
    for z in (z2, z3):
        assert z["bf16"]["enabled"] is True and z["fp16"]["enabled"] is False
        assert z["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
        assert "gradient_clipping" not in z and "optimizer" not in z and "scheduler" not in z
    assert (z2["train_micro_batch_size_per_gpu"], z2["train_batch_size"]) == (32, 256)
    assert (z3["train_micro_batch_size_per_gpu"], z3["train_batch_size"]) == (16, 128)
    assert z3["zero_optimization"]["stage3_prefetch_bucket_size"] == 15_099_494  # int(0.9·h²): DeepSpeed wants an int
    assert z3["zero_optimization"]["stage3_param_persistence_threshold"] == 40960
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_strategy_builds_with_the_resolved_config(tiny_model):
    from lmm.training.strategies import build_strategy

    cfg = cfg_of("+experiment=llava_v1_5_7b", "scale=paper")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = build_strategy(cfg.stages.finetune.strategy, tiny_model, 16)
    assert isinstance(strategy, DeepSpeedStrategy) and type(strategy).__name__ == "LmmDeepSpeedStrategy"
    assert strategy.handles_gradient_accumulation is False  # Lightning owns the boundary (test_deepspeed_cpu.py)
    zero = strategy.config["zero_optimization"]
    h = tiny_model.llm.config.hidden_size
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == h * h
    assert "gradient_accumulation_steps" not in strategy.config  # Lightning sets it from the Trainer


def test_fsdp_shards_by_decoder_layer(tiny_model):
    from lmm.training.strategies import decoder_layer_classes

    assert [c.__name__ for c in decoder_layer_classes(tiny_model.llm)] == ["LlamaDecoderLayer"]


def test_tf32_switch():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        assert set_tf32(True) is True and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
        torch.set_float32_matmul_precision("highest")


# ------------------------------------------------------------------------------------------------ 3. world size
def test_world_size_comes_from_the_trainer_that_runs():
    """``devices`` as a string or list used to count as one device: the global batch became 128 × N."""
    from lmm.training.run import accumulation, world_size

    trainer = L.Trainer(accelerator="cpu", devices="2", strategy="ddp", logger=False)
    stage = OmegaConf.create({"global_batch_size": 128, "micro_batch_size": 16})
    assert world_size(trainer) == 2 and accumulation(stage, world_size(trainer)) == 4
    single = L.Trainer(accelerator="cpu", devices="auto", logger=False)
    assert world_size(single) == 1 and accumulation(stage, 1) == 8


# ------------------------------------------------------------------------------------- 4. no random connector
def test_stage_two_alone_needs_a_connector():
    from lmm.training.run import ConfigError, check_connector_sources

    with pytest.raises(ConfigError, match="init_connector"):
        check_connector_sources(cfg_of("run_stages=[finetune]"))
    check_connector_sources(cfg_of("run_stages=[finetune]", "stages.finetune.init_connector=mm_projector.bin"))
    check_connector_sources(cfg_of("run_stages=[finetune]", "stages.finetune.allow_random_connector=true"))
    check_connector_sources(cfg_of())  # stage 1 first: it trains the connector


# ------------------------------------------------------------------------------------------ non-finite guard
def test_non_finite_loss_stops_naming_step_and_samples(tiny_model, tiny_tokenizer, tmp_path):
    with torch.no_grad():
        tiny_model.llm.get_input_embeddings().weight[:] = float("nan")
    module = LlavaLitModule(tiny_model, ["connector", "llm"], lr=1e-3)
    with pytest.raises(NonFiniteError, match=r"non-finite loss .* step 0 .*\['bad0', 'bad1'\]"):
        fit(module, [text_batch(tiny_tokenizer, ids_prefix="bad")], tmp_path)


def test_non_finite_gradients_stop_or_are_skipped_and_counted(tiny_model, tiny_tokenizer, tmp_path):
    head = tiny_model.llm.get_output_embeddings().weight
    handle = head.register_hook(lambda g: g * math.inf)
    module = LlavaLitModule(tiny_model, ["connector", "llm"], lr=1e-3)
    with pytest.raises(NonFiniteError, match=r"non-finite gradients at step 0 .*\['g0', 'g1'\]"):
        fit(module, [text_batch(tiny_tokenizer, ids_prefix="g")], tmp_path)
    handle.remove()
    # skip mode: the poisoned step leaves weights alone and is counted; the clean one trains
    before = head.detach().clone()
    module = LlavaLitModule(tiny_model, ["connector", "llm"], lr=1e-3, warmup_ratio=0.0, nonfinite="skip")
    handle = head.register_hook(lambda g: g * math.inf)
    fit(module, [text_batch(tiny_tokenizer)], tmp_path)
    assert module.nonfinite_skipped == 1 and torch.equal(head.detach(), before)
    handle.remove()
    fit(module, [text_batch(tiny_tokenizer)], tmp_path)
    assert module.nonfinite_skipped == 1 and not torch.equal(head.detach(), before)
    assert module.data_counts()["train/nonfinite_skipped"] == 1
