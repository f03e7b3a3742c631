"""Lightning's ``DeepSpeedStrategy`` with the accumulation of a DDP run and checkpoints that count when complete.

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


def deepspeed_strategy_class():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    class LmmDeepSpeedStrategy(DeepSpeedStrategy):
        """Lightning's DeepSpeed strategy; Lightning owns the accumulation boundary (see the module docstring), and a
        checkpoint folder counts only when every rank's shard is complete."""

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
