"""Distributed strategies per stage (``stages.<stage>.strategy``, conf/strategy): auto, DDP, FSDP, DeepSpeed.

LLaVA-1.5 trains stage 1 under DeepSpeed ZeRO-2 (``scripts/zero2.json``) and stage 2 under ZeRO-3 (``zero3.json``),
both in bf16 with fp32 masters and without gradient clipping. Every strategy here keeps trainable weights and AdamW
state in fp32 (:mod:`lmm.training.precision`):

* ``auto`` / ``ddp``: the trainable parameters themselves are fp32; bf16-mixed autocasts the compute.
* ``fsdp``: PyTorch FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy`` (it runs on CPU as well,
  unlike Lightning's FSDP1 strategy): the sharded parameters are fp32 masters, gathered in ``param_dtype`` for
  compute, gradients reduced in ``reduce_dtype``. Units: every decoder layer of the LLM (its ``_no_split_modules``
  class), the token embeddings, the decoder, the LM head, the vision tower, the connector, the rest of the LLM, the
  root.
* ``deepspeed``: the official JSON, verbatim, with HF Trainer's ``auto`` values resolved by
  :func:`resolve_deepspeed_config`; DeepSpeed holds fp32 masters of the bf16 model (``bf16.enabled``).

On one node, ``ddp`` and ``fsdp`` host their process group's store on 127.0.0.1 only (torch's listens on every
interface): :mod:`lmm.training.rendezvous`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from lmm.common import plain
from lmm.training.rendezvous import init_process_group_on_loopback
from lmm.training.same_model import StrategyError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")


def _spec(spec: Any) -> dict:
    """A strategy spec as a dict: a config node, a dict, a bare name, or None (= auto)."""
    if isinstance(spec, str):
        return {"name": spec}
    return dict(plain(spec) or {"name": "auto"})


def strategy_name(spec: Any) -> str:
    name = _spec(spec).get("name", "auto")
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)} (conf/strategy)")
    return name


def resolve_deepspeed_config(config: dict, micro_batch_size: int, accumulation: int, world_size: int,
                             hidden_size: int, precision: str = "bf16-mixed") -> dict:
    """LLaVA's DeepSpeed JSON with every ``"auto"`` filled in as HF Trainer (transformers' ``HfTrainerDeepSpeedConfig``
    ``trainer_config_process`` / ``trainer_config_finalize``) fills it for ``finetune.sh`` / ``pretrain.sh``:

    * ``fp16.enabled`` ← ``--fp16`` (false), ``bf16.enabled`` ← ``--bf16`` (true): from the Lightning precision.
    * ``train_micro_batch_size_per_gpu`` ← per-device batch; ``gradient_accumulation_steps`` ← accumulation;
      ``train_batch_size`` ← micro × accumulation × world size.
    * ``reduce_bucket_size`` ← hidden², and for ZeRO-3 ``stage3_prefetch_bucket_size`` ← int(0.9·hidden²) (HF's
      ``int``: DeepSpeed ≥ 0.15's config model refuses a fractional 15,099,494.4),
      ``stage3_param_persistence_threshold`` ← 10·hidden, with ``hidden`` the LLM's ``hidden_size`` (LLaVA's model
      config is the LLM's: 4096 for 7B, 5120 for 13B).
    * no ``gradient_clipping`` key: HF sets it only where the JSON says ``"auto"`` — so DeepSpeed does not clip.
    * no ``optimizer`` / ``scheduler``: HF's AdamW and cosine schedule are used (here: ours, the same).
    """
    cfg = copy.deepcopy(config)
    bf16, fp16 = precision.startswith("bf16"), precision.startswith("16")
    fill = {
        ("fp16", "enabled"): fp16, ("bf16", "enabled"): bf16,
        ("train_micro_batch_size_per_gpu",): micro_batch_size, ("gradient_accumulation_steps",): accumulation,
        ("train_batch_size",): micro_batch_size * accumulation * world_size,
        ("zero_optimization", "reduce_bucket_size"): hidden_size * hidden_size,
        ("zero_optimization", "stage3_prefetch_bucket_size"): int(0.9 * hidden_size * hidden_size),
        ("zero_optimization", "stage3_param_persistence_threshold"): 10 * hidden_size,
    }
    for path, value in fill.items():
        node = cfg
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1]) == "auto":
            node[path[-1]] = value
    left = [k for k, v in _walk(cfg) if v == "auto"]
    if left:
        raise StrategyError(f"DeepSpeed config keys left at 'auto' that lmm does not resolve: {left}")
    return cfg


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def llm_hidden_size(model: nn.Module) -> int:
    return int(model.llm.config.hidden_size)


def build_strategy(spec: Any, model: nn.Module, micro_batch_size: int, accelerator: str | None = None,
                   precision: str = "bf16-mixed"):
    """The Lightning strategy (a name or an object) for a stage's ``strategy`` config; ``precision`` is the
    Trainer's (DeepSpeed's ``bf16`` / ``fp16`` blocks follow it)."""
    spec = _spec(spec)
    name = strategy_name(spec)
    if name == "auto":
        return "auto"
    if name == "ddp":
        return _ddp_strategy_class()(find_unused_parameters=bool(spec.get("find_unused_parameters", False)))
    if name == "fsdp":
        # One full state dict in one file on rank 0 (trainable weights only, see LlavaLitModule.on_save_checkpoint).
        return _fsdp2_strategy_class()(save_distributed_checkpoint=False)
    return build_deepspeed(spec, model, micro_batch_size, precision=precision)


def _ddp_strategy_class():
    from lightning.pytorch.strategies import DDPStrategy

    class LoopbackDDPStrategy(DDPStrategy):
        """Lightning's DDP; on one node its process group's store listens on 127.0.0.1 only
        (:mod:`lmm.training.rendezvous`)."""

        def setup_distributed(self) -> None:
            init_process_group_on_loopback(self)
            super().setup_distributed()

    return LoopbackDDPStrategy


def _fsdp2_strategy_class():
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        """Lightning's ModelParallelStrategy as pure data parallelism: every process is one FSDP rank (its "auto"
        sizes would make the node count the data-parallel size). On one node its process group's store listens
        on 127.0.0.1 only (:mod:`lmm.training.rendezvous`)."""

        def setup_environment(self) -> None:
            self._data_parallel_size = self.num_nodes * self.num_processes
            self._tensor_parallel_size = 1
            super().setup_environment()

        def _setup_distributed(self) -> None:
            init_process_group_on_loopback(self)
            super()._setup_distributed()

    return FSDP2Strategy


def build_deepspeed(spec: dict, model: nn.Module, micro_batch_size: int, precision: str = "bf16-mixed", **kwargs):
    """LLaVA's DeepSpeed JSON, resolved for ``precision``, in :mod:`lmm.training.deepspeed_strategy`'s strategy
    (``kwargs`` go to it)."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise StrategyError("strategy deepspeed needs DeepSpeed: pip install 'lmm[deepspeed]' (CUDA GPUs only); "
                            "or choose strategy@stages.<stage>.strategy=fsdp") from e
    from lmm.training.deepspeed_strategy import deepspeed_strategy_class

    # Lightning sets gradient_accumulation_steps (from the Trainer) and DeepSpeed derives train_batch_size; the
    # rest is the official JSON with HF's "auto" values (world size and accumulation do not enter these keys).
    resolved = resolve_deepspeed_config(spec["config"], micro_batch_size, 1, 1, llm_hidden_size(model), precision)
    for key in ("gradient_accumulation_steps", "train_batch_size"):
        resolved.pop(key, None)
    return deepspeed_strategy_class()(config=resolved, exclude_frozen_parameters=True, **kwargs)


def is_fsdp(strategy) -> bool:
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def _dtype(name: str | None, on_gpu: bool) -> torch.dtype | None:
    if name is None:
        return None
    return getattr(torch, name)


def decoder_layer_classes(llm: nn.Module) -> tuple[type, ...]:
    """The LLM's transformer block classes: transformers' ``_no_split_modules`` names (e.g. ``LlamaDecoderLayer``)."""
    names = set(getattr(llm, "_no_split_modules", None) or [])
    classes = {type(m) for m in llm.modules() if type(m).__name__ in names}
    if not classes:
        raise StrategyError(f"{type(llm).__name__} names no decoder layer class (_no_split_modules) to shard by")
    return tuple(classes)


def shard_fsdp(model: nn.Module, mesh, spec: Any) -> int:
    """Apply FSDP2 ``fully_shard`` to a :class:`~lmm.models.llava.LlavaModel` (decoder layers, tower, connector,
    LLM, root); return the number of units. Trainable parameters must already be fp32 (the masters)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    spec = _spec(spec)
    on_gpu = mesh.device_type == "cuda"
    mp = MixedPrecisionPolicy(param_dtype=_dtype(spec.get("param_dtype"), on_gpu),
                              reduce_dtype=_dtype(spec.get("reduce_dtype", "float32"), on_gpu))
    kw = {"mesh": mesh, "mp_policy": mp, "reshard_after_forward": bool(spec.get("reshard_after_forward", True))}
    if spec.get("activation_checkpointing", True) and not getattr(model.llm, "is_gradient_checkpointing", False):
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.config.use_cache = False
    layers = decoder_layer_classes(model.llm)
    units = [m for m in model.llm.modules() if isinstance(m, layers)]
    # The splice looks the token embeddings up itself (outside the LLM's forward): they get their own unit, whose
    # hook gathers them on that call — unless tied to the LM head, which then keeps them in the LLM's unit.
    embed = model.llm.get_input_embeddings()
    head = model.llm.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    if not tied:
        units.append(embed)
    # Training calls the decoder and the LM head one after the other (the head at labelled positions only,
    # LlavaModel.forward(logits="labelled")): each is a unit, so its own hook gathers it on that call.
    units.append(model.llm.get_decoder())
    if head is not None and not tied:
        units.append(head)
    # Frozen and trainable parameters get their own units (a unit holds one dtype: frozen parts may be bf16).
    units += [model.vision, model.connector, model.llm]
    for unit in units:
        fully_shard(unit, **kw)
    fully_shard(model, **kw)
    return len(units) + 1


def load_from_rank0(model: nn.Module, state: dict | None, device) -> None:
    """After FSDP2 sharding: every rank's shards from rank 0's full ``state`` (its ``state_dict()`` taken before
    sharding; None on the other ranks), the meta tensors of a meta-built rank allocated first
    (``to_empty``); every buffer, persistent or not, broadcast from rank 0."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=device)
    set_model_state_dict(model, state if dist.get_rank() == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
