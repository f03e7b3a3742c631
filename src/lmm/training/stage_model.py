"""Which model each rank holds for a stage, and letting a finished stage go.

Host memory at paper scale is set by how many ranks hold the whole model: 8 ranks each building Vicuna-13B
(26 GB in bf16) and loading a stage's consolidated fp32 weights (52 GB) is ≈ 0.6 TB per node. So:

* **rank 0** builds the model whole (it loads the checkpoints, and saves every stage);
* **another rank** builds it whole only for a stage that replicates it (``auto``, ``ddp``, DeepSpeed ZeRO-1/2); for
  a stage that partitions the weights (:func:`partitions_weights`: FSDP, DeepSpeed ZeRO-3) it builds it on the meta
  device (shapes, no storage, no weights read) and receives rank 0's weights as they are partitioned — FSDP after
  sharding (:func:`lmm.training.strategies.load_from_rank0`), ZeRO-3 parameter by parameter through
  ``deepspeed.zero.Init`` before the engine starts (:func:`lmm.training.deepspeed_strategy.partition_from_rank0`) —
  holding its shard only; after the last stage it holds nothing (rank 0 alone saves);
* a finished stage's Trainer, LightningModule, optimizer state (and DeepSpeed engine) are released before the next
  stage builds anything (:func:`release`).

Rank 0 still loads the whole model: it reads the checkpoints (docs/paper_scale.md, "Host memory").
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lmm.common import plain
from lmm.training.checkpoint_io import ResumeError
from lmm.training.checkpointing import load_trainable_state
from lmm.training.components import build_model
from lmm.training.module import LlavaLitModule
from lmm.training.stages import load_connector
from lmm.training.strategies import strategy_name

log = logging.getLogger(__name__)


def make_module(cfg: DictConfig, stage: DictConfig, model) -> LlavaLitModule:
    spec = OmegaConf.to_container(stage.strategy, resolve=True) if stage.get("strategy") else {"name": "auto"}
    return LlavaLitModule(model, list(stage.trainable), stage.lr, stage.get("connector_lr"), stage.weight_decay,
                          stage.warmup_ratio, lora=stage.get("lora"), nonfinite=cfg.get("guard", {}).get(
                              "nonfinite", "raise"), fsdp=spec if spec.get("name") == "fsdp" else None,
                          fp32_masters=spec.get("name") != "deepspeed", packing=stage.get("packing", "auto"),
                          compile=stage.get("compile"))


def is_meta(model) -> bool:
    return any(p.is_meta for p in model.parameters())


def adopt_stage(cfg: DictConfig, stage: DictConfig, model, checkpoint: str | Path) -> None:
    """Put a finished stage's trainable weights into ``model`` (its parts frozen / LoRA-wrapped as the stage). A
    model on the meta device takes the stage's structure only (its weights come from rank 0)."""
    if is_meta(model):
        make_module(cfg, stage, model)
        return
    if stage.get("init_connector"):
        load_connector(model, stage.init_connector)
    module = make_module(cfg, stage, model)
    state = load_trainable_state(checkpoint)
    unknown = set(state) - set(module.state_dict())
    if unknown:
        raise ResumeError(f"{checkpoint} holds weights this model does not have (first: {sorted(unknown)[:3]})")
    module.load_state_dict(state, strict=False)


def holds_whole_model(stage: DictConfig | None, rank: int) -> bool | None:
    """Whether this rank needs the model whole for ``stage`` (None: after the last stage): True on rank 0 and for a
    stage that replicates it, False (meta) on another rank of an FSDP or DeepSpeed ZeRO-3 stage, None (no model) on
    another rank after the last stage."""
    if rank == 0:
        return True
    if stage is None:
        return None
    return not partitions_weights(stage.get("strategy"))


def partitions_weights(spec) -> bool:
    """Whether a stage's strategy shards the weights themselves: FSDP, DeepSpeed ZeRO-3."""
    name = strategy_name(spec)
    if name == "deepspeed":
        node = OmegaConf.create(plain(spec)) if isinstance(spec, (dict, DictConfig)) else OmegaConf.create()
        return OmegaConf.select(node, "config.zero_optimization.stage") == 3
    return name == "fsdp"


def model_for_stage(cfg: DictConfig, tokenizer, history: list[tuple[DictConfig, Path]], stage: DictConfig | None,
                    rank: int):
    """The model this rank holds for ``stage`` (see :func:`holds_whole_model`), with the finished stages
    (``history``) adopted in order; None where it needs none."""
    whole = holds_whole_model(stage, rank)
    if whole is None:
        log.info("rank %d: no later stage — the trained model is not rebuilt here (rank 0 saves it)", rank)
        return None
    model = build_model(cfg, tokenizer, meta=not whole)
    if not whole:
        log.info("rank %d: model built on the meta device; it receives rank 0's weights once sharded", rank)
    for st, path in history:
        adopt_stage(cfg, st, model, path)
    return model


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux: ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def release() -> None:
    """Collect what a finished stage left (its Trainer, LightningModule and optimizer state hold reference cycles)
    and return the freed GPU memory to the device."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
