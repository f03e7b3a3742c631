"""The parts a training run is assembled from: tokenizer, the model
(built deterministically, so a resumed or re-sharded run rebuilds the same frozen weights), a stage's data, its
callbacks, and the tags and data counts that go to MLflow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmm.data.datamodule import build_datamodule
from lmm.data.processor import SampleProcessor
from lmm.models.build import build_llava
from lmm.text.tokenizer import load_tokenizer

StageCallbacks = Callable[[str, Any, SampleProcessor], list]  # (stage name, tokenizer, processor) -> callbacks


def training_seed(cfg: DictConfig) -> int:
    """The seed of the training draw — model init, data order, Lightning's RNGs, the stage-reuse key: ``seed +
    training_seed_offset``. The synthetic world follows ``seed`` alone, so ``seed=S training_seed_offset=100``
    trains another draw on the same data and benchmarks (the seed-vs-seed calibration of Table 2 in miniature)."""
    return int(cfg.seed) + int(cfg.get("training_seed_offset") or 0)


def build_tokenizer(cfg: DictConfig):
    """The LLM's tokenizer: ``model.llm.tokenizer`` (a twin run gets its tiny tokenizer's folder there, from
    :func:`lmm.synth.world.prepare_training`), else ``model.llm.name_or_path``."""
    llm = cfg.model.llm
    path = llm.get("tokenizer") or (None if cfg.model.twin else llm.get("name_or_path"))
    if not path:
        raise ValueError("no tokenizer: set model.llm.tokenizer (a twin run gets it from "
                         "lmm.synth.world.prepare_training, which train.py calls)")
    return load_tokenizer(path, cfg.model.max_length)


def build_data(cfg: DictConfig, stage_name: str, processor: SampleProcessor, micro_batch_size: int, accum: int,
               pad_id: int, num_image_tokens: int, packed: bool = False):
    """The stage's streaming shard DataModule (the stage's JSON converted on first use); micro-batches of
    ``stages.<stage>.micro_batch_tokens`` tokens when that is set, counted packed or padded as the model runs."""
    return build_datamodule(cfg.data, stage_name, processor, micro_batch_size, accum, pad_id, training_seed(cfg),
                            num_image_tokens=num_image_tokens, max_length=cfg.model.max_length, packed=packed,
                            micro_batch_tokens=cfg.stages[stage_name].get("micro_batch_tokens"))


def data_counts(data, all_ranks: bool = False) -> dict[str, float]:
    """Counts in = out + rejected + skipped; the loading counts summed over the ranks with ``all_ranks`` (a
    collective: every rank calls it)."""
    return {k: float(v) for k, v in data.counts(all_ranks=all_ranks).items() if isinstance(v, (int, float))}


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags for every MLflow run of this training: the experiment's own, and the sweep with its swept value."""
    tags = {k: str(v) for k, v in (cfg.logger.get("tags") or {}).items()}
    if cfg.get("sweep"):
        tags["sweep"] = cfg.sweep.name
        tags["sweep.key"] = cfg.sweep.key
        tags["sweep.value"] = str(OmegaConf.select(cfg, cfg.sweep.key))
    return tags


def stage_callbacks(cfg: DictConfig, stage_name: str, tokenizer, processor: SampleProcessor,
                    extra: StageCallbacks | None = None) -> list:
    """The ``callbacks`` config's (each ``_target_`` instantiated; a ``null`` entry is off), then what the caller's
    ``extra(stage_name, tokenizer, processor)`` adds (the entry point's benchmarks scored during training)."""
    callbacks = [instantiate(node, _convert_="all") for node in (cfg.get("callbacks") or {}).values() if node]
    return callbacks + list(extra(stage_name, tokenizer, processor) if extra else [])


def build_model(cfg: DictConfig, tokenizer, meta: bool = False):
    """The LLaVA model of ``cfg.model``, its random parts drawn from :func:`training_seed` alone (the caller's RNG
    is left as it was): a rebuild — after a sharded stage, or in a resumed run — gives the same frozen weights. With
    ``meta`` the same model on the meta device, no weights read (a rank that receives rank 0's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training_seed(cfg))
        return build_llava(cfg.model.vision, cfg.model.connector, cfg.model.llm, cfg.model.max_length, tokenizer,
                           twin=cfg.model.twin, hd=cfg.model.get("hd"), meta=meta)

