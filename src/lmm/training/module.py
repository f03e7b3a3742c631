"""One LightningModule for both stages: the stage decides what trains; the data decides nothing here."""

from __future__ import annotations

import time
from collections import Counter

import lightning as L

from lmm.data.batch import Batch
from lmm.models.llava import LlavaModel
from lmm.training.optim import build_optimizer
from lmm.training.stages import apply_stage, param_groups


class LlavaLitModule(L.LightningModule):
    def __init__(self, model: LlavaModel, trainable: list[str], lr: float, connector_lr: float | None = None,
                 weight_decay: float = 0.0, warmup_ratio: float = 0.03, betas=(0.9, 0.999), eps: float = 1e-8,
                 lora: dict | None = None):
        super().__init__()
        self.model = model
        # lora ({r, alpha, dropout} or None): the LLM trains through LoRA adapters (lmm.models.lora)
        self.param_table = apply_stage(model, list(trainable), dict(lora) if lora else None)
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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Explicitly the stage's trainable weights (stage 1: the connector; stage 2: connector + LLM): the frozen
        # tower (and a frozen LLM) come from their own checkpoints when the run is rebuilt.
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["lmm_trainable"] = sorted(trainable)

    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches)
        groups = param_groups(self.model, self.lr, self.connector_lr, self.weight_decay)
        opt, sched = build_optimizer(groups, total, self.warmup_ratio, self.betas, self.eps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch: Batch, batch_idx: int):
        self._t0 = time.perf_counter()

    def training_step(self, batch: Batch, batch_idx: int):
        self.skipped.update(batch.skipped)
        if len(batch) == 0:
            # Every sample of this micro-batch was skipped (and counted). A zero loss tied to the trainable weights
            # keeps every rank in the same gradient sync (returning None would hang DDP).
            return sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        out = self.model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                         image_grids=batch.image_grids)
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
        return loss

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int):
        if self._t0 is not None and len(batch):
            dt = max(time.perf_counter() - self._t0, 1e-9)
            self.log("train/tokens_per_s", self._tokens / dt, prog_bar=True, batch_size=len(batch))
        for i, group in enumerate(self.optimizers().optimizer.param_groups):
            self.log(f"train/lr_{group.get('name', i)}", group["lr"], batch_size=max(len(batch), 1))
        self.log_dict(self.data_counts(), batch_size=max(len(batch), 1))

    def data_counts(self) -> dict[str, float]:
        counts = {"data/samples_seen": float(self.samples_seen), "data/fully_masked": float(self.fully_masked),
                  "data/truncated": float(self.truncated)}
        counts.update({f"data/skipped_{k}": float(v) for k, v in self.skipped.items()})
        return counts
