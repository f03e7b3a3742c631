"""Callbacks: the fully-masked-sample guard (LLaVA's silent "loss is 0") and small benchmarks scored during training.
(Step checkpoints and pre-emption: :mod:`lmm.training.checkpointing`.)"""

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


class BenchmarkDuringTraining(L.Callback):
    """Optional: answer and score small benchmarks (e.g. the synthetic twins, or a trimmed local copy of the real
    files) every ``every_n_epochs`` during training, logged to the stage's run as ``val/<bench>/score``."""

    def __init__(self, tokenizer, template, transform, benchmarks: list[str], data_root: str,
                 every_n_epochs: int = 1, batch_size: int = 16, benchmark_options: dict | None = None):
        self.tokenizer, self.template, self.transform = tokenizer, template, transform
        self.benchmarks, self.data_root = list(benchmarks), data_root
        self.every, self.batch_size, self.options = max(1, every_n_epochs), batch_size, benchmark_options or {}

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.every or trainer.global_rank != 0:
            return
        from lmm.evaluation.benchmarks import get_benchmark
        from lmm.evaluation.generate import answer_questions

        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            for name in self.benchmarks:
                bench = get_benchmark(name).with_options(**dict(self.options.get(name) or {}))
                questions = bench.questions(self.data_root)
                answers = answer_questions(model, self.tokenizer, self.template, questions, self.transform,
                                           bench.max_new_tokens, self.batch_size)
                score = bench.score(answers, self.data_root).get("score")
                if isinstance(score, (int, float)):
                    pl_module.log(f"val/{name}/score", float(score), rank_zero_only=True)
        finally:
            model.train(was_training)
