"""Small benchmarks answered and scored during training (a Lightning callback the entry point adds to stage 2)."""

from __future__ import annotations

import lightning as L

from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.generate import answer_questions


def local_benchmark(name: str, options: dict | None = None):
    """Benchmark ``name`` with its ``options``, on a split scored here: a split whose ground truth only a server
    holds (VQAv2 test-dev, VizWiz test under ``eval=official``) becomes val, so the epoch ends with a number."""
    bench = get_benchmark(name).with_options(**dict((options or {}).get(name) or {}))
    return bench.with_options(split="val") if bench.scored_on else bench


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
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            for name in self.benchmarks:
                bench = local_benchmark(name, self.options)
                questions = bench.questions(self.data_root)
                answers = answer_questions(model, self.tokenizer, self.template, questions, self.transform,
                                           bench.max_new_tokens, self.batch_size)
                score = bench.score(answers, self.data_root).get("score")
                if isinstance(score, (int, float)):
                    pl_module.log(f"val/{name}/score", float(score), rank_zero_only=True)
        finally:
            model.train(was_training)
