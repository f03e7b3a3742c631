"""The parts a training run is assembled from: tokenizer, backbone configs (pretrained twins resolved), the model
(built deterministically, so a resumed or re-sharded run rebuilds the same frozen weights), a stage's data, its
callbacks, and the tags and data counts that go to MLflow."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lmm.data.batch import collate
from lmm.data.llava_json import LlavaJsonDataset
from lmm.data.processor import SampleProcessor
from lmm.models.build import build_llava
from lmm.training.callbacks import BenchmarkDuringTraining, MaskedSampleGuard


def build_tokenizer(cfg: DictConfig):
    from lmm.data.synth import tokenizer_corpus
    from lmm.text.tokenizer import load_tokenizer, train_tiny_tokenizer

    llm = cfg.model.llm
    path = None if cfg.model.twin else (llm.get("tokenizer") or llm.get("name_or_path"))
    if path:
        return load_tokenizer(path, cfg.model.max_length)
    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), llm.get("tiny_vocab_size") or 1000,
                                  Path(cfg.paths.cache_dir), cfg.model.max_length)
    return tok


def _with_pretrained_twin(cfg: DictConfig, part: str, pretrain) -> dict[str, Any]:
    """``model.<part>`` as a dict; at ``scale=tiny`` a twin block with ``pretrain`` gets the ``checkpoint`` that
    ``pretrain(part_dict)`` trains once into the cache (or finds there)."""
    conf = OmegaConf.to_container(cfg.model[part], resolve=True)
    twin = conf.get("twin") or {}
    if cfg.model.twin and twin.get("pretrain") is not None and not twin.get("checkpoint"):
        conf["twin"] = {**twin, "checkpoint": str(pretrain(conf))}
    return conf


def build_vision_config(cfg: DictConfig) -> dict[str, Any]:
    """``model.vision``, its twin pretrained if asked (:mod:`lmm.training.twin_tower`)."""
    from lmm.training.twin_tower import pretrain_twin_tower

    return _with_pretrained_twin(cfg, "vision", lambda v: pretrain_twin_tower(v, cfg.paths.cache_dir))


def build_llm_config(cfg: DictConfig, tokenizer) -> dict[str, Any]:
    """``model.llm``, its twin chat-tuned on the twin world's text if asked (:mod:`lmm.training.twin_llm`)."""
    from lmm.training.twin_llm import pretrain_twin_llm

    return _with_pretrained_twin(cfg, "llm", lambda m: pretrain_twin_llm(
        m, tokenizer, m.get("chat_template") or "vicuna_v1", cfg.paths.cache_dir))


def build_data(cfg: DictConfig, stage_name: str, processor: SampleProcessor, micro_batch_size: int, accum: int,
               pad_id: int, num_image_tokens: int):
    """The stage's data: a streaming shard DataModule (``data.loader=shards``) or a map-style JSON loader."""
    if cfg.data.get("loader", "shards") == "shards":
        from lmm.data.datamodule import build_datamodule

        return build_datamodule(cfg.data, stage_name, processor, micro_batch_size, accum, pad_id, cfg.seed,
                                num_image_tokens=num_image_tokens, max_length=cfg.model.max_length)
    from lmm.data.synth import twin_spec, write_twin

    spec = twin_spec(OmegaConf.to_container(cfg.data, resolve=True))
    if spec:
        write_twin(spec)
    stage_data = cfg.data[stage_name]
    dataset = LlavaJsonDataset(stage_data.json, stage_data.image_folder, processor, cfg.data.on_error)
    return DataLoader(
        dataset, batch_size=micro_batch_size, shuffle=True, num_workers=cfg.data.num_workers,
        collate_fn=partial(collate, pad_id=pad_id, padding_side="right"),
        generator=torch.Generator().manual_seed(cfg.seed), persistent_workers=cfg.data.num_workers > 0,
    )


def data_counts(data) -> dict[str, float]:
    """Counts in = out + rejected + skipped, from whichever loader ran."""
    if isinstance(data, DataLoader):
        ds = data.dataset
        return {"data/records_in": float(len(ds) + len(ds.rejected)),
                **{f"data/rejected_{k}": float(v) for k, v in ds.rejected_counts.items()}}
    return {k: float(v) for k, v in data.counts().items() if isinstance(v, (int, float))}


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags for every MLflow run of this training: the experiment's own, and the sweep with its swept value."""
    tags = {k: str(v) for k, v in (cfg.logger.get("tags") or {}).items()}
    if cfg.get("sweep"):
        tags["sweep"] = cfg.sweep.name
        tags["sweep.key"] = cfg.sweep.key
        tags["sweep.value"] = str(OmegaConf.select(cfg, cfg.sweep.key))
    return tags


def stage_callbacks(cfg: DictConfig, stage_name: str, tokenizer, processor: SampleProcessor) -> list:
    """The masked-sample guard always; small benchmarks scored during stage 2 when ``eval.during_training`` is on."""
    callbacks = [MaskedSampleGuard(cfg.data.max_masked_share, cfg.data.masked_min_samples)]
    during = cfg.get("eval", {}).get("during_training") or {}
    if during.get("enabled") and stage_name == "finetune":
        if cfg.eval.get("synthetic_benchmarks"):
            from lmm.data.synth.benchmarks import write_synthetic_benchmarks

            write_synthetic_benchmarks(cfg.eval.data_root, cfg.eval.synthetic_benchmarks.n_images,
                                       cfg.eval.synthetic_benchmarks.image_size, names=list(during.benchmarks))
        callbacks.append(BenchmarkDuringTraining(
            tokenizer, processor.template, processor.image_transform, list(during.benchmarks),
            during.get("data_root") or cfg.eval.data_root, during.get("every_n_epochs", 1), cfg.eval.batch_size,
            OmegaConf.to_container(cfg.eval.benchmark_options, resolve=True) if cfg.eval.get("benchmark_options")
            else None))
    return callbacks


def build_model(cfg: DictConfig, tokenizer, vision: dict[str, Any], llm: dict[str, Any]):
    """The LLaVA model of ``cfg.model``, its random parts drawn from ``cfg.seed`` alone (the caller's RNG is left
    as it was): a rebuild — after a sharded stage, or in a resumed run — gives the same frozen weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_llava(vision, cfg.model.connector, llm, cfg.model.max_length, tokenizer,
                           twin=cfg.model.twin, hd=cfg.model.get("hd"))

