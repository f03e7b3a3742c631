"""One LightningModule for both stages: the stage decides what trains; the data decides nothing here.

Trainable weights are fp32 masters whatever the model was loaded in (:mod:`lmm.training.precision`); a non-finite
loss or gradient stops the run naming the step and the samples (or skips the step and counts it, ``nonfinite=skip``);
a checkpoint holds, besides Lightning's state, the RNG states, the data accounting, the MLflow run id and the run
folder and stage that wrote it. With ``compile`` (``stages.<stage>.compile``) the LLM's decoder layers are
``torch.compile``d for the stage's fit, after FSDP2 sharding and LoRA wrapping, and run eagerly again after it."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter

import lightning as L
import torch

from lmm.data.batch import Batch
from lmm.models.llava import LlavaModel
from lmm.models.llm import compile_decoder_layers, compile_options, uncompile_decoder_layers
from lmm.models.packing import PACKABLE_ATTENTION, attention_of
from lmm.training.checkpointing import get_rng_state, set_rng_state
from lmm.training.optim import build_optimizer
from lmm.training.precision import check_fp32_masters, keep_fp32_masters
from lmm.training.stages import apply_stage, param_groups

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    pass


class CompileError(ValueError):
    pass


DEEPSPEED_COMPILE = (
    "stages.<stage>.compile.enabled=true is not supported under DeepSpeed: its engine partitions the model through "
    "hooks of its own (ZeRO-3 gathers and frees parameters around each module) that compiling the decoder layers in "
    "place is not known to compose with (DeepSpeed offers its own engine.compile), and it cannot be tested here. Use "
    "strategy@stages.<stage>.strategy=fsdp (FSDP2, compiled per layer), ddp or auto, or set "
    "stages.<stage>.compile.enabled=false.")


class LlavaLitModule(L.LightningModule):
    def __init__(self, model: LlavaModel, trainable: list[str], lr: float, connector_lr: float | None = None,
                 weight_decay: float = 0.0, warmup_ratio: float = 0.03, betas=(0.9, 0.999), eps: float = 1e-8,
                 lora: dict | None = None, nonfinite: str = "raise", fsdp: dict | None = None,
                 fp32_masters: bool = True, packing: bool | str = False, compile: dict | bool | None = None):
        super().__init__()
        # torch.compile of the LLM's decoder layers ({enabled, backend, mode, dynamic, fullgraph}; None: off),
        # applied in configure_model — after FSDP2 sharding — and undone in teardown
        self.compile_spec = compile_options(compile)
        self._compiled = False
        if packing not in (True, False, "auto"):
            raise ValueError(f"packing must be true, false or auto, got {packing!r}")
        if packing == "auto":  # pack with every kernel that keeps samples apart from position ids (exact)
            packing = attention_of(model.llm) in PACKABLE_ATTENTION
        self.packing = packing  # padding-free micro-batches (LlavaModel.forward(packed=True))
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"guard.nonfinite must be raise or skip, got {nonfinite!r}")
        self.model = model
        # lora ({r, alpha, dropout} or None): the LLM trains through LoRA adapters (lmm.models.lora)
        self.param_table = apply_stage(model, list(trainable), dict(lora) if lora else None)
        # fp32 masters for what trains; frozen parts keep their dtype. Under DeepSpeed the engine keeps them itself
        # (fp32_masters=False): the bf16 module is handed over as loaded, without an fp32 copy per rank.
        self.n_upcast = keep_fp32_masters(model) if fp32_masters else 0
        self.nonfinite, self.fsdp = nonfinite, fsdp
        self.nonfinite_skipped = 0
        self.mlflow_run_id: str | None = None
        self.run_dir: str | None = None  # the run folder and stage, recorded in checkpoints (resume checks them)
        self.stage_name: str | None = None
        self._step_ids: list[str] = []
        self._state_checked = False
        self.lr, self.connector_lr, self.weight_decay = lr, connector_lr, weight_decay
        self.warmup_ratio, self.betas, self.eps = warmup_ratio, betas, eps
        # Data accounting: every sample is trained on, or counted under a reason.
        self.samples_seen = 0
        self.fully_masked = 0
        self.fully_masked_ids: list[str] = []
        self.truncated = 0
        self.skipped: Counter = Counter()
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self._t0 = None
        self.strict_loading = False  # checkpoints hold the trainable weights only (see on_save_checkpoint)

    def configure_model(self) -> None:
        """Under ``strategy=fsdp`` (Lightning's ModelParallelStrategy): shard the model with FSDP2, once; with several
        ranks, every rank's shards then come from rank 0's weights (another rank may hold the model on the meta
        device only: :mod:`lmm.training.stage_model`). Then, with ``compile`` on, ``torch.compile`` each decoder
        layer of the (sharded, LoRA-wrapped) LLM in place, once."""
        from lmm.training.same_model import check_same_model
        from lmm.training.strategies import is_fsdp, load_from_rank0, shard_fsdp

        if self.fsdp is not None and is_fsdp(self.trainer.strategy) and not getattr(self, "_sharded", False):
            several = self.trainer.world_size > 1
            if several:
                check_same_model(self.model, self.trainer.strategy)
            state = self.model.state_dict() if several and self.global_rank == 0 else None
            shard_fsdp(self.model, self.device_mesh["data_parallel"], self.fsdp)
            if several:
                load_from_rank0(self.model, state, self.device)
            del state
            self._sharded = True
        if self.compile_spec is not None and not self._compiled:
            if self._trainer is not None and _is_deepspeed(self.trainer.strategy):
                raise CompileError(DEEPSPEED_COMPILE)
            n = compile_decoder_layers(self.model.llm, **self.compile_spec)
            self._compiled = True
            log.info("torch.compile: %d decoder layers of the LLM (%s); the first steps compile", n,
                     ", ".join(f"{k}={v}" for k, v in self.compile_spec.items()))

    def teardown(self, stage: str) -> None:
        """The stage's model is handed on (next stage, saving, evaluation) with eager decoder layers."""
        if self._compiled:
            uncompile_decoder_layers(self.model.llm)
            self._compiled = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Explicitly the stage's trainable weights (stage 1: the connector; stage 2: connector + LLM): the frozen
        # tower (and a frozen LLM) come from their own checkpoints when the run is rebuilt.
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["lmm_trainable"] = sorted(trainable)
        checkpoint["lmm"] = {
            "mlflow_run_id": self.mlflow_run_id, "run_dir": self.run_dir, "stage": self.stage_name,
            "rng": get_rng_state(),
            "counters": {"samples_seen": self.samples_seen, "fully_masked": self.fully_masked,
                         "fully_masked_ids": self.fully_masked_ids[:100], "truncated": self.truncated,
                         "skipped": dict(self.skipped), "nonfinite_skipped": self.nonfinite_skipped,
                         "first_loss": self.first_loss, "last_loss": self.last_loss},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("lmm") or {}
        c = state.get("counters") or {}
        self.samples_seen, self.fully_masked = int(c.get("samples_seen", 0)), int(c.get("fully_masked", 0))
        self.fully_masked_ids = list(c.get("fully_masked_ids", []))
        self.truncated, self.skipped = int(c.get("truncated", 0)), Counter(c.get("skipped", {}))
        self.nonfinite_skipped = int(c.get("nonfinite_skipped", 0))
        self.first_loss, self.last_loss = c.get("first_loss"), c.get("last_loss")
        if state.get("rng"):
            set_rng_state(state["rng"])

    def on_train_start(self) -> None:
        if not _is_deepspeed(self.trainer.strategy):  # DeepSpeed keeps its own fp32 masters of the bf16 module
            check_fp32_masters(self.model)

    def stepping_batches(self) -> int:
        """The stage's optimizer steps, as Lightning's estimate — from the datamodule's epoch length when it has one,
        without building the loader's iterator: a sharded strategy restores the data position only after
        ``configure_optimizers``, and an iterator made before that would start the epoch at micro-batch 0."""
        trainer = self.trainer
        n = getattr(trainer.datamodule, "micro_batches_per_epoch", None)
        if n is None or trainer.max_epochs == -1:
            return int(trainer.estimated_stepping_batches)
        steps = math.ceil(n / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

    def configure_optimizers(self):
        total = self.stepping_batches()
        groups = param_groups(self.model, self.lr, self.connector_lr, self.weight_decay)
        opt, sched = build_optimizer(groups, total, self.warmup_ratio, self.betas, self.eps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch: Batch, batch_idx: int):
        self._t0 = time.perf_counter()

    def _zero_loss(self) -> torch.Tensor:
        # A zero loss tied to the trainable weights keeps every rank in the same gradient sync (None would hang DDP).
        return sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` on any rank (a collective under several ranks, so that every rank decides alike)."""
        if self.trainer.world_size > 1:
            return bool(self.trainer.strategy.reduce_boolean_decision(flag, all=False))
        return flag

    def training_step(self, batch: Batch, batch_idx: int):
        self.skipped.update(batch.skipped)
        self._step_ids += list(batch.ids)
        if len(batch) == 0:
            # Every sample of this micro-batch was skipped (and counted); the guard's collective still runs.
            self._any_rank(False)
            return self._zero_loss()
        out = self.model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                         image_grids=batch.image_grids, logits="labelled",  # LM head at labelled positions only
                         packed=self.packing)
        if self._any_rank(not math.isfinite(float(out.loss.detach()))):
            if self.nonfinite == "raise":
                raise NonFiniteError(
                    f"non-finite loss (here {float(out.loss.detach())}) at step {self.trainer.global_step} "
                    f"(micro-batch {batch_idx}, rank {self.global_rank}); sample ids: {list(batch.ids)}. Set "
                    f"guard.nonfinite=skip to skip such steps (counted as train/nonfinite_skipped).")
            self.nonfinite_skipped += 1
            return self._zero_loss()
        self.samples_seen += len(batch)
        self.truncated += out.n_truncated
        if out.fully_masked:
            self.fully_masked += len(out.fully_masked)
            self.fully_masked_ids += [batch.ids[i] for i in out.fully_masked]
        loss = out.loss
        value = float(loss.detach())
        self.first_loss = value if self.first_loss is None else self.first_loss
        self.last_loss = value
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/target_tokens", float(out.n_target_tokens), batch_size=len(batch))
        self._tokens = int(out.attention_mask.sum())
        # the micro-batch's spliced tokens: what a token budget (stages.<s>.micro_batch_tokens) planned for
        self.log("train/batch_tokens", float(self._tokens), batch_size=len(batch))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Non-finite gradients: stop naming the step and the samples of its micro-batches, or skip the update
        (``nonfinite=skip``: the gradients are dropped, so AdamW leaves weights and moments alone)."""
        grads = [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        bad = self._any_rank(any(not bool(torch.isfinite(g).all()) for g in local))
        ids, self._step_ids = self._step_ids, []
        if not bad:
            return
        if self.nonfinite == "raise":
            raise NonFiniteError(f"non-finite gradients at step {self.trainer.global_step} (rank {self.global_rank}); "
                                 f"sample ids of the step: {ids}. Set guard.nonfinite=skip to skip such steps.")
        self.nonfinite_skipped += 1
        for p in self.model.parameters():
            p.grad = None

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int):
        if not self._state_checked and self.trainer.global_step > 0 and not _is_deepspeed(self.trainer.strategy):
            check_fp32_masters(self.model, self.optimizers().optimizer)  # the AdamW moments, once they exist
            self._state_checked = True
        if self._t0 is not None and len(batch):
            dt = max(time.perf_counter() - self._t0, 1e-9)
            self.log("train/tokens_per_s", self._tokens / dt, prog_bar=True, batch_size=len(batch))
        for i, group in enumerate(self.optimizers().optimizer.param_groups):
            self.log(f"train/lr_{group.get('name', i)}", group["lr"], batch_size=max(len(batch), 1))
        self.log_dict(self.data_counts(), batch_size=max(len(batch), 1))

    def data_counts(self) -> dict[str, float]:
        counts = {"data/samples_seen": float(self.samples_seen), "data/fully_masked": float(self.fully_masked),
                  "data/truncated": float(self.truncated), "train/nonfinite_skipped": float(self.nonfinite_skipped)}
        counts.update({f"data/skipped_{k}": float(v) for k, v in self.skipped.items()})
        return counts


def _is_deepspeed(strategy) -> bool:
    """Lightning's DeepSpeedStrategy or a subclass (ours: lmm.training.deepspeed_strategy), without importing it."""
    return any(cls.__name__ == "DeepSpeedStrategy" for cls in type(strategy).__mro__)
