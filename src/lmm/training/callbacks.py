"""The fully-masked-sample guard (LLaVA's silent "loss is 0"). Step checkpoints and pre-emption:
:mod:`lmm.training.checkpointing`; benchmarks scored during training: :mod:`lmm.evaluation.during_training`."""

from __future__ import annotations

import lightning as L


class MaskedSampleError(RuntimeError):
    pass


class MaskedSampleGuard(L.Callback):
    """Stop the run when more than ``max_share`` of the samples seen have every label masked."""

    def __init__(self, max_share: float = 0.01, min_samples: int = 64):
        self.max_share, self.min_samples = max_share, min_samples

    def check(self, module, final: bool = False) -> None:
        seen, masked = module.samples_seen, module.fully_masked
        if seen == 0 or (not final and seen < self.min_samples):
            return
        if masked / seen > self.max_share:
            raise MaskedSampleError(
                f"{masked} of {seen} samples ({100 * masked / seen:.1f}%) have every label masked, above the "
                f"allowed {100 * self.max_share:.1f}%: the loss sees nothing of them. Usual causes: a template that "
                f"does not fit the LLM's tokenizer (stage template vs LLM), replies truncated away by max_length, "
                f"or records without assistant turns. First ids: {module.fully_masked_ids[:10]}"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.check(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.check(pl_module, final=True)
