"""Run the stages a config names, in order: build once, train each stage, hand the connector on, track in MLflow."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lmm.data.batch import collate
from lmm.data.llava_json import LlavaJsonDataset
from lmm.data.processor import SampleProcessor
from lmm.models.build import build_llava
from lmm.models.checkpoint import save_model_dir
from lmm.models.hd import image_transform_for
from lmm.text.templates import get_template
from lmm.tracking import mlflow as track
from lmm.training.callbacks import BenchmarkDuringTraining, MaskedSampleGuard
from lmm.training.module import LlavaLitModule
from lmm.training.stages import format_param_table, load_connector, save_connector

log = logging.getLogger(__name__)


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


def accumulation(stage: DictConfig, trainer_cfg: DictConfig) -> int:
    world = int(trainer_cfg.devices if isinstance(trainer_cfg.devices, int) else 1) * int(trainer_cfg.num_nodes)
    per_step = stage.micro_batch_size * world
    if stage.global_batch_size % per_step:
        raise ValueError(f"global batch {stage.global_batch_size} is not a multiple of micro batch "
                         f"{stage.micro_batch_size} × {world} device(s)")
    return stage.global_batch_size // per_step


def run_training(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    cfg_yaml = out_dir / "config.yaml"
    cfg_yaml.write_text(yaml.safe_dump(resolved, sort_keys=False))
    tokenizer = build_tokenizer(cfg)
    model = build_llava(build_vision_config(cfg), cfg.model.connector, build_llm_config(cfg, tokenizer), cfg.model.max_length, tokenizer,
                        twin=cfg.model.twin, hd=cfg.model.get("hd"))
    precision = cfg.trainer.precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    sha = track.git_sha()
    results: dict[str, Any] = {"output_dir": str(out_dir), "stages": {}}

    for name in cfg.run_stages:
        stage = cfg.stages[name]
        stage_dir = out_dir / name
        if stage.get("init_connector"):
            load_connector(model, stage.init_connector)
        model.hd_active = model.hd is not None and bool(stage.get("hd", True))
        transform = image_transform_for(model, stage.image_aspect_ratio)
        processor = SampleProcessor(tokenizer, get_template(stage.template), transform)
        accum = accumulation(stage, cfg.trainer)
        image_tokens = model.hd.max_num_tokens if model.hd_active else model.num_image_tokens
        data = build_data(cfg, name, processor, stage.micro_batch_size, accum, tokenizer.pad_token_id, image_tokens)
        module = LlavaLitModule(model, list(stage.trainable), stage.lr, stage.get("connector_lr"),
                                stage.weight_decay, stage.warmup_ratio, lora=stage.get("lora"))
        table = format_param_table(module.param_table)
        log.info("stage %s — trainable parameters:\n%s", name, table)
        logger = track.make_logger(cfg.logger.tracking_uri, cfg.logger.experiment_name, f"{cfg.run_name}-{name}",
                                   {"stage": name, "git_sha": sha, "run_group": str(out_dir),
                                    **run_tags(cfg)})
        track.log_config(logger, resolved, cfg_yaml)
        track.log_text(logger, table, f"{name}_trainable_parameters.txt")
        trainer = L.Trainer(
            max_epochs=stage.epochs, max_steps=stage.max_steps, accumulate_grad_batches=accum,
            gradient_clip_val=stage.gradient_clip_val, precision=precision, accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes, strategy=cfg.trainer.strategy,
            logger=logger, callbacks=stage_callbacks(cfg, name, tokenizer, processor),
            default_root_dir=str(stage_dir), enable_checkpointing=False, log_every_n_steps=cfg.trainer.log_every_n_steps,
            enable_progress_bar=cfg.trainer.enable_progress_bar, enable_model_summary=False,
        )
        if isinstance(data, DataLoader):
            trainer.fit(module, train_dataloaders=data)
        else:
            trainer.fit(module, datamodule=data)
        ckpt = stage_dir / "last.ckpt"
        trainer.save_checkpoint(str(ckpt))
        connector_file = save_connector(model, stage_dir / "connector.safetensors")
        counts = {**data_counts(data), **module.data_counts()}
        track.log_metrics(logger, counts, step=trainer.global_step)
        spec = {"model": OmegaConf.to_container(cfg.model, resolve=True), "template": stage.template,
                "image_aspect_ratio": stage.image_aspect_ratio, "max_length": cfg.model.max_length,
                "stage": name, "git_sha": sha, "mlflow_run_id": logger.run_id,
                "mlflow_tracking_uri": cfg.logger.tracking_uri, "hd_active": model.hd_active,
                "tags": run_tags(cfg)}
        # The full model folder (what eval.py loads) is written for the last stage only; earlier stages hand on
        # their trainable weights (checkpoint + connector file), as LLaVA's stage 1 saves mm_projector.bin only.
        model_dir = save_model_dir(model, tokenizer, spec, stage_dir / "model") if name == cfg.run_stages[-1] else None
        track.log_artifact(logger, connector_file)
        logger.finalize("success")
        results["stages"][name] = {
            "checkpoint": str(ckpt), "model_dir": str(model_dir) if model_dir else None, "mlflow_run_id": logger.run_id,
            "first_loss": module.first_loss, "last_loss": module.last_loss, "steps": trainer.global_step,
            "data": counts,
        }
        log.info("stage %s done: loss %.4f → %.4f over %d steps; checkpoint %s", name, module.first_loss or 0,
                 module.last_loss or 0, trainer.global_step, ckpt)
    results["tracking_uri"] = cfg.logger.tracking_uri
    if cfg.get("eval") and cfg.eval.after_training and results["stages"]:
        from lmm.evaluation.run import run_eval

        eval_cfg = OmegaConf.merge(cfg.eval, {"tracking_uri": cfg.logger.tracking_uri,
                                              "experiment_name": cfg.logger.experiment_name})
        results["eval"] = run_eval(eval_cfg, out_dir, out_dir / "eval")
    return results
