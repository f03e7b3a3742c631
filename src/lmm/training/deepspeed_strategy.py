"""Lightning's ``DeepSpeedStrategy`` with the accumulation of a DDP run, ZeRO-3 partitioned from rank 0's weights,
and checkpoints that count when complete.

**Gradient accumulation.** Lightning's closure divides each micro-batch's loss by ``accumulate_grad_batches``;
Lightning's ``DeepSpeedStrategy`` then calls ``engine.backward(loss)``, which divides by the engine's
``gradient_accumulation_steps`` again (``scale_wrt_gas=True``): the gradients were ``1/k`` of the intended ones. And
the strategy lets the engine decide when to step (``handles_gradient_accumulation``): the engine steps every ``k``
micro-batches by its own counter, which runs across epochs, so an epoch whose micro-batches do not divide by ``k``
(the sampler's shorter last global batch) has its last window carried into the next epoch's first step — or, after
the last epoch, never applied — while Lightning's step counter, logging and LR schedule count other steps.

Here Lightning decides, as for DDP: an optimizer step every ``k`` micro-batches and at the epoch's last micro-batch
(``handles_gradient_accumulation = False``); before each micro-batch's forward the engine is told whether it ends a
step (``engine.set_gradient_accumulation_boundary``, DeepSpeed's API for a caller that owns the boundary), the
engine's ``backward`` does not divide again (``scale_wrt_gas=False``), and ``engine.step()`` is called once per step.
The update is then the one a DDP run of the same data makes (``tests/training/test_deepspeed_cpu.py``: the real
engine, LLaVA's zero2.json and zero3.json, on the CPU; ``benchmarks/gpu_step.py --deepspeed`` on a GPU).

**ZeRO-3 from rank 0's weights.** Under ZeRO-3 a rank other than 0 holds the model on the meta device
(:mod:`lmm.training.stage_model`). Before the engine starts, every rank partitions the model itself, as the engine
would (its parameters cast to the config's bf16 / fp16, then ``deepspeed.zero.Init(module=...)`` with the dtype and
config the engine passes): ``Init`` broadcasts each parameter from rank 0 and keeps this rank's partition only
(``partition_parameters.py``, ``_zero_init_param``). A meta parameter gets its storage just before its own
broadcast, so a rank holds at most one parameter whole at a time; the buffers (never partitioned) are broadcast
from rank 0 (:func:`partition_from_rank0`). The engine then finds the model partitioned and leaves it as it is.

**Checkpoints.** Saved as DeepSpeed folders that count only once every rank's shard is written
(:mod:`lmm.training.deepspeed_checkpoint`), and read — on resume — with ``weights_only`` loads only.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmm.training.deepspeed_checkpoint import (
    TAG,
    begin_save,
    check_deepspeed_checkpoint,
    complete_save,
    is_refusal,
    mark_rank_done,
    refused,
    weights_only_loads,
)
from lmm.training.same_model import check_same_model


def deepspeed_strategy_class():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    class LmmDeepSpeedStrategy(DeepSpeedStrategy):
        """Lightning's DeepSpeed strategy; Lightning owns the accumulation boundary, ZeRO-3 partitions the model
        from rank 0's weights before the engine starts (see the module docstring), and a checkpoint folder counts
        only when every rank's shard is complete."""

        @property
        def handles_gradient_accumulation(self) -> bool:
            return False

        def training_step(self, *args: Any, **kwargs: Any):
            trainer = self.lightning_module.trainer
            self.deepspeed_engine.set_gradient_accumulation_boundary(not trainer.fit_loop._should_accumulate())
            return super().training_step(*args, **kwargs)

        @contextmanager
        def block_backward_sync(self):
            # Lightning would enter engine.no_sync() (the engine looks like DDP to it), which ZeRO-2/3 refuse: the
            # engine already knows from the boundary when to reduce
            yield None

        def backward(self, closure_loss, optimizer, *args: Any, **kwargs: Any):
            # Lightning's closure has divided the loss by accumulate_grad_batches already
            kwargs["scale_wrt_gas"] = False
            return super().backward(closure_loss, optimizer, *args, **kwargs)

        def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
            if self.zero_stage_3:
                check_same_model(model, self, "ZeRO-3")  # a meta-built rank > 0 must match rank 0's model
                partition_from_rank0(model, self.config, self.root_device)
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

        def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Any | None = None) -> None:
            if storage_options is not None:
                raise TypeError("the DeepSpeed strategy takes no storage_options")
            folder = Path(self.broadcast(str(filepath)))
            if self.is_global_zero:
                folder.mkdir(parents=True, exist_ok=True)
                begin_save(folder)
            self.barrier("lmm_deepspeed_save_begin")
            engine = self.deepspeed_engine
            client = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
            engine.save_checkpoint(str(folder), client_state=client, tag=TAG, save_latest=False,
                                   exclude_frozen_parameters=self.exclude_frozen_parameters)
            mark_rank_done(folder, self.global_rank, written_files(engine, folder))
            self.barrier("lmm_deepspeed_shards_written")
            if self.is_global_zero:
                complete_save(folder, self.world_size, int(engine.zero_optimization_stage()))
            self.barrier("lmm_deepspeed_save_complete")

        def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
            check_deepspeed_checkpoint(checkpoint_path)
            try:
                with weights_only_loads():
                    return super().load_checkpoint(checkpoint_path, weights_only=True)
            except Exception as e:
                if is_refusal(e):
                    raise refused(Path(checkpoint_path), e) from e
                raise

    return LmmDeepSpeedStrategy


def written_files(engine, folder: Path) -> list[Path]:
    """The files this rank's engine wrote for one save (DeepSpeed's own names for them)."""
    files = []
    if engine.save_non_zero_checkpoint:
        files.append(Path(engine._get_ckpt_name(str(folder), TAG)))
    if engine.save_zero_checkpoint:
        files.append(Path(engine._get_zero_ckpt_name(str(folder), TAG)))
    return files


def partition_from_rank0(model, config: dict, device) -> None:
    """Collective, before ``deepspeed.initialize`` under ZeRO-3 (see the module docstring): ``model``'s parameters
    cast as the engine casts them and partitioned with rank 0's values, a meta parameter materialised just before
    its broadcast; its buffers on ``device``, rank 0's."""
    import torch
    import torch.distributed as dist
    from deepspeed.runtime.engine import CASTABLE_DTYPES
    from deepspeed.runtime.zero.partition_parameters import Init

    half = torch.half if (config.get("fp16") or {}).get("enabled") else None
    dtype = torch.bfloat16 if (config.get("bf16") or {}).get("enabled") else half
    for p in model.parameters():  # the engine's cast (DeepSpeedEngine._cast_module_mixed_precision)
        if dtype is not None and p.dtype in CASTABLE_DTYPES and p.dtype != dtype:
            p.data = p.data.to(dtype)
    for mod in model.modules():  # buffers are not partitioned: whole on every rank, rank 0's
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = torch.empty_like(b, device=device) if b.is_meta else b.to(device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, src=0)

    class MaterialisingInit(Init):
        """``zero.Init`` that gives a meta parameter its storage just before broadcasting and partitioning it."""

        def _convert_to_zero_parameters(self, param_list):
            for p in param_list:
                if p.is_meta:
                    real = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=self.local_device),
                                              requires_grad=p.requires_grad)
                    real.__dict__.update(p.__dict__)
                    torch.utils.swap_tensors(p, real)  # the same object (the optimizer holds it), now real
                super()._convert_to_zero_parameters([p])

    MaterialisingInit(module=model, dtype=next(model.parameters()).dtype, config_dict_or_path=config)
