"""What the entry points run: the synthetic world prepared (at ``scale=tiny``), then training and evaluation wired
together. The only module that sees :mod:`lmm.training`, :mod:`lmm.evaluation` and :mod:`lmm.synth` at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmm.common import plain
from lmm.evaluation.during_training import BenchmarkDuringTraining
from lmm.evaluation.run import run_eval
from lmm.synth.world import prepare_eval, prepare_training
from lmm.training.components import run_tags
from lmm.training.run import run_training


def train(cfg: DictConfig) -> dict[str, Any]:
    """``train.py``: prepare → train every stage → evaluate the final model (``eval.after_training``, rank 0)."""
    if not cfg.get("plan"):
        prepare_training(cfg)
    results = run_training(cfg, extra_callbacks=lambda stage, tok, proc: during_training(cfg, stage, tok, proc))
    if "plan" in results or not results["stages"] or not results.get("is_global_zero", True):
        return results
    if cfg.get("eval") and cfg.eval.after_training:
        out_dir = Path(cfg.paths.output_dir)
        eval_cfg = OmegaConf.merge(cfg.eval, {"tracking_uri": cfg.logger.tracking_uri,
                                              "experiment_name": cfg.logger.experiment_name,
                                              "tags": run_tags(cfg)})  # this run's (its stages may be reused)
        results["eval"] = run_eval(prepare_eval(eval_cfg), out_dir, out_dir / "eval")
    return results


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``eval.py``: prepare the (synthetic) benchmarks, then evaluate ``cfg.checkpoint``."""
    return run_eval(prepare_eval(cfg.eval), cfg.checkpoint, cfg.output_dir)


def during_training(cfg: DictConfig, stage: str, tokenizer, processor) -> list:
    """Stage 2's small benchmarks scored every ``eval.during_training.every_n_epochs`` (when enabled)."""
    during = (cfg.get("eval") or {}).get("during_training") or {}
    if not during.get("enabled") or stage != "finetune":
        return []
    return [BenchmarkDuringTraining(
        tokenizer, processor.template, processor.image_transform, list(during.benchmarks),
        during.get("data_root") or cfg.eval.data_root, during.get("every_n_epochs", 1), cfg.eval.batch_size,
        plain(cfg.eval.get("benchmark_options")))]
