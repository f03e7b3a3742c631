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
from lmm.data.images import ImageTransform
from lmm.data.llava_json import LlavaJsonDataset
from lmm.data.processor import SampleProcessor
from lmm.models.build import build_llava
from lmm.models.checkpoint import save_model_dir
from lmm.text.templates import get_template
from lmm.tracking import mlflow as track
from lmm.training.callbacks import MaskedSampleGuard
from lmm.training.module import LlavaLitModule
from lmm.training.stages import format_param_table, load_connector, save_connector

log = logging.getLogger(__name__)


def build_tokenizer(cfg: DictConfig):
    from lmm.data.synthetic import tokenizer_corpus
    from lmm.text.tokenizer import load_tokenizer, train_tiny_tokenizer

    llm = cfg.model.llm
    path = None if cfg.model.twin else (llm.get("tokenizer") or llm.get("name_or_path"))
    if path:
        return load_tokenizer(path, cfg.model.max_length)
    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), llm.get("tiny_vocab_size") or 1000,
                                  Path(cfg.paths.cache_dir), cfg.model.max_length)
    return tok


def prepare_data(cfg: DictConfig) -> None:
    """Build the synthetic twin on demand (a no-op when it is already there or the data are real)."""
    if cfg.data.get("kind") == "synthetic":
        from lmm.data.synthetic import write_synthetic

        write_synthetic(cfg.data.root, cfg.data.n_pretrain, cfg.data.n_finetune, cfg.data.text_only_share,
                        cfg.data.image_size, cfg.data.seed)


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
    prepare_data(cfg)
    tokenizer = build_tokenizer(cfg)
    model = build_llava(cfg.model.vision, cfg.model.connector, cfg.model.llm, cfg.model.max_length, tokenizer,
                        twin=cfg.model.twin)
    precision = cfg.trainer.precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    sha = track.git_sha()
    results: dict[str, Any] = {"output_dir": str(out_dir), "stages": {}}

    for name in cfg.run_stages:
        stage = cfg.stages[name]
        stage_dir = out_dir / name
        if stage.get("init_connector"):
            load_connector(model, stage.init_connector)
        data_cfg = cfg.data[name]
        transform = ImageTransform(model.vision.image_size, stage.image_aspect_ratio,
                                   model.vision.image_mean, model.vision.image_std)
        processor = SampleProcessor(tokenizer, get_template(stage.template), transform)
        dataset = LlavaJsonDataset(data_cfg.json, data_cfg.image_folder, processor, cfg.data.on_error)
        loader = DataLoader(
            dataset, batch_size=stage.micro_batch_size, shuffle=True, num_workers=cfg.data.num_workers,
            collate_fn=partial(collate, pad_id=tokenizer.pad_token_id, padding_side="right"),
            generator=torch.Generator().manual_seed(cfg.seed), persistent_workers=cfg.data.num_workers > 0,
        )
        module = LlavaLitModule(model, list(stage.trainable), stage.lr, stage.get("connector_lr"),
                                stage.weight_decay, stage.warmup_ratio)
        table = format_param_table(module.param_table)
        log.info("stage %s — trainable parameters:\n%s", name, table)
        logger = track.make_logger(cfg.logger.tracking_uri, cfg.logger.experiment_name, f"{cfg.run_name}-{name}",
                                   {"stage": name, "git_sha": sha, "run_group": cfg.run_name,
                                    **(cfg.logger.get("tags") or {})})
        track.log_config(logger, resolved, cfg_yaml)
        track.log_text(logger, table, f"{name}_trainable_parameters.txt")
        trainer = L.Trainer(
            max_epochs=stage.epochs, max_steps=stage.max_steps, accumulate_grad_batches=accumulation(stage, cfg.trainer),
            gradient_clip_val=stage.gradient_clip_val, precision=precision, accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes, strategy=cfg.trainer.strategy,
            logger=logger, callbacks=[MaskedSampleGuard(cfg.data.max_masked_share, cfg.data.masked_min_samples)],
            default_root_dir=str(stage_dir), enable_checkpointing=False, log_every_n_steps=cfg.trainer.log_every_n_steps,
            enable_progress_bar=cfg.trainer.enable_progress_bar, enable_model_summary=False,
        )
        trainer.fit(module, loader)
        ckpt = stage_dir / "last.ckpt"
        trainer.save_checkpoint(str(ckpt))
        connector_file = save_connector(model, stage_dir / "connector.safetensors")
        counts = {"data/records_in": float(len(dataset) + len(dataset.rejected)),
                  **{f"data/rejected_{k}": float(v) for k, v in dataset.rejected_counts.items()},
                  **module.data_counts()}
        track.log_metrics(logger, counts, step=trainer.global_step)
        spec = {"model": OmegaConf.to_container(cfg.model, resolve=True), "template": stage.template,
                "image_aspect_ratio": stage.image_aspect_ratio, "max_length": cfg.model.max_length,
                "stage": name, "git_sha": sha, "mlflow_run_id": logger.run_id,
                "mlflow_tracking_uri": cfg.logger.tracking_uri}
        model_dir = save_model_dir(model, tokenizer, spec, stage_dir / "model")
        track.log_artifact(logger, connector_file)
        logger.finalize("success")
        results["stages"][name] = {
            "checkpoint": str(ckpt), "model_dir": str(model_dir), "mlflow_run_id": logger.run_id,
            "first_loss": module.first_loss, "last_loss": module.last_loss, "steps": trainer.global_step,
            "data": counts,
        }
        log.info("stage %s done: loss %.4f → %.4f over %d steps; checkpoint %s", name, module.first_loss or 0,
                 module.last_loss or 0, trainer.global_step, ckpt)
    results["tracking_uri"] = cfg.logger.tracking_uri
    return results
