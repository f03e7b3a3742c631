"""Run the stages a config names, in order: build once, train each stage, hand the weights on, track in MLflow.

Each stage carries its own strategy (``stages.<stage>.strategy``: LLaVA uses ZeRO-2, then ZeRO-3) and its global
batch (kept as ``micro × accumulation × world size``, the world size read from the Trainer that runs). A stage
checkpoints every ``checkpointing.every_n_steps`` optimizer steps; ``resume=auto`` keeps the finished stages of the
run folder and continues the interrupted one from its newest readable checkpoint, in the same MLflow run."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmm.data.hd_cells import image_transform_for
from lmm.data.processor import SampleProcessor
from lmm.models.checkpoint import save_model_dir
from lmm.models.llm import compile_options
from lmm.text.templates import get_template
from lmm.tracking import mlflow as track
from lmm.training.checkpointing import (
    DONE_FILE,
    AtomicCheckpointIO,
    StepCheckpoints,
    check_checkpoint_origin,
    consolidate_deepspeed,
    find_resume_checkpoint,
    stage_done,
    validate_checkpoint,
    write_json_atomic,
    write_text_atomic,
)
from lmm.training.components import (
    StageCallbacks,
    build_data,
    build_tokenizer,
    data_counts,
    run_tags,
    stage_callbacks,
    training_seed,
)
from lmm.training.module import DEEPSPEED_COMPILE
from lmm.training.precision import resolve_precision, set_tf32
from lmm.training.reuse import KEY_FIELD, finished_key, record, reuse, reuse_tags
from lmm.training.run_folder import config_changes, launch_rank, prepare_run_folder, save_overrides
from lmm.training.stage_model import adopt_stage, make_module, model_for_stage, peak_rss_gib, release
from lmm.training.stages import format_param_table, load_connector, save_connector
from lmm.training.strategies import build_strategy, strategy_name

log = logging.getLogger(__name__)
PREEMPTED_EXIT = 143  # 128 + SIGTERM, what a scheduler expects of a job that stopped on its notice


class ConfigError(ValueError):
    pass


class EmptyStageError(RuntimeError):
    """A stage that trained on no sample (every one unreadable or skipped): nothing of it is kept."""


def world_size(trainer: L.Trainer) -> int:
    """Processes that will train: the Trainer's devices per node × nodes (``devices`` may be an int, a list, a
    string or ``auto`` — the Trainer has resolved it)."""
    return int(trainer.num_devices) * int(trainer.num_nodes)


def accumulation(stage: DictConfig, world: int) -> int:
    per_step = stage.micro_batch_size * world
    if stage.global_batch_size % per_step:
        raise ConfigError(f"global batch {stage.global_batch_size} is not a multiple of micro batch "
                          f"{stage.micro_batch_size} × {world} process(es); change stages.<stage>.micro_batch_size")
    return stage.global_batch_size // per_step


def check_connector_sources(cfg: DictConfig) -> None:
    """A stage that must not start from a random connector (LLaVA's stage 2 always gets ``--pretrain_mm_mlp_adapter``)
    needs an earlier stage in this run or ``init_connector``."""
    for i, name in enumerate(cfg.run_stages):
        stage = cfg.stages[name]
        if i == 0 and not stage.get("init_connector") and not stage.get("allow_random_connector", False):
            raise ConfigError(
                f"stage {name} would start from a randomly initialised connector: no earlier stage in run_stages and "
                f"no stages.{name}.init_connector. Pass the stage-1 connector (stages.{name}.init_connector="
                f"<run>/pretrain/connector.safetensors, or LLaVA's mm_projector.bin, as --pretrain_mm_mlp_adapter), "
                f"run both stages (run_stages=[pretrain,{name}]), or set stages.{name}.allow_random_connector=true "
                f"if that is what you want.")


def check_compile(cfg: DictConfig) -> None:
    """``stages.<stage>.compile`` is refused under DeepSpeed before anything is built (see module.DEEPSPEED_COMPILE)."""
    for name in cfg.run_stages:
        stage = cfg.stages[name]
        if compile_options(stage.get("compile")) is not None and strategy_name(stage.get("strategy")) == "deepspeed":
            raise ConfigError(DEEPSPEED_COMPILE.replace("<stage>", name))


def is_gpu(cfg: DictConfig) -> bool:
    acc = str(cfg.trainer.accelerator)
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def run_training(cfg: DictConfig, extra_callbacks: StageCallbacks | None = None) -> dict[str, Any]:
    """Train ``cfg.run_stages`` in order (or print the pre-flight plan with ``plan=true``). Every file the run reads
    must exist (a twin run's are written by :func:`lmm.synth.world.prepare_training` first);
    ``extra_callbacks(stage, tokenizer, processor)`` adds callbacks to a stage."""
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("plan"):
        from lmm.training.plan import run_plan

        return {"plan": run_plan(cfg), "stages": {}, "output_dir": str(out_dir),
                "tracking_uri": cfg.logger.tracking_uri}
    precision, resolved, cfg_yaml, changes = start_run(cfg)
    tokenizer = build_tokenizer(cfg)
    rank = launch_rank()
    model = None  # built for the first stage that trains (whole, or on the meta device: stage_model)
    sha = track.git_sha()
    results: dict[str, Any] = {"output_dir": str(out_dir), "stages": {}}
    history: list[tuple[DictConfig, Path]] = []  # finished stages and their weights, in order
    is_zero = True
    reused: dict[str, dict] = {}  # stages taken from an earlier run with the same inputs (lmm.training.reuse)
    trained: list[str] = []  # stages trained by this invocation (resume=<file> applies to the first)
    for i, name in enumerate(cfg.run_stages):
        stage, stage_dir = cfg.stages[name], out_dir / name
        done = stage_done(stage_dir) if cfg.get("resume") else None
        if not done and (info := reuse(cfg, name, stage_dir)):
            reused[name], done = info, {**stage_done(stage_dir), "reused_from": info["source_dir"]}
        if done:
            log.info("stage %s finished in an earlier run (%s): kept, not redone", name, stage_dir / DONE_FILE)
            if model is not None:
                adopt_stage(cfg, stage, model, stage_dir / "last.ckpt")
            history.append((stage, stage_dir / "last.ckpt"))
            results["stages"][name] = done
            continue
        if model is None:
            model = model_for_stage(cfg, tokenizer, history, stage, rank)
        ckpt, ckpt_info = resume_point(cfg, stage_dir, first=not trained)
        if stage.get("init_connector"):
            load_connector(model, stage.init_connector)
        result, trainer, sharded, logger = train_stage(cfg, name, stage, model, tokenizer, precision, sha, resolved,
                                                       cfg_yaml, ckpt, ckpt_info, extra_callbacks, reuse_tags(reused),
                                                       changes)
        history.append((stage, stage_dir / "last.ckpt"))
        trained.append(name)
        if sharded:  # sharded across ranks: rebuilt from the stages' weights where needed (whole on rank 0)
            later = cfg.run_stages[i + 1:]
            model = None
            model = model_for_stage(cfg, tokenizer, history, cfg.stages[later[0]] if later else None, rank)
        is_zero = trainer.is_global_zero
        if is_zero:
            finish_stage(cfg, name, stage, model, tokenizer, sha, result, stage_dir, logger)
        trainer.strategy.barrier("stage_done")
        results["stages"][name] = result
        del trainer, logger  # the stage's Trainer, module, optimizer state (DeepSpeed engine) go before the next
        release()
        log.info("rank %d: peak host memory %.2f GiB after stage %s", rank, peak_rss_gib(), name)
    results["tracking_uri"] = cfg.logger.tracking_uri
    results["is_global_zero"] = is_zero
    return results


def start_run(cfg: DictConfig) -> tuple[str, dict, Path, list[str]]:
    """Seed, TF32, the config checks, the precision; the run folder checked (an earlier run in it is refused
    unless ``resume`` or ``overwrite=true``: :mod:`lmm.training.run_folder`); the resolved config and the command
    line's overrides written to it. On a resume, the keys whose values differ from the run's recorded config are
    logged and returned (``key: old → new``)."""
    L.seed_everything(training_seed(cfg), workers=True)
    set_tf32(bool(cfg.get("tf32")))
    check_connector_sources(cfg)
    check_compile(cfg)
    precision = resolve_precision(cfg.trainer.precision, is_gpu(cfg))
    out_dir = Path(cfg.paths.output_dir)
    prepare_run_folder(out_dir, cfg.get("resume"), cfg.get("overwrite"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    cfg_yaml = out_dir / ("config_resume.yaml" if cfg.get("resume") else "config.yaml")
    changes = config_changes(out_dir / "config.yaml", resolved) if cfg.get("resume") else []
    if changes:
        log.warning("resume=%s: the config differs from the run's recorded %s in %d key(s) — a resumed stage keeps "
                    "its optimizer and schedule state from the checkpoint:\n  %s", cfg.resume, out_dir / "config.yaml",
                    len(changes), "\n  ".join(changes))
    if launch_rank() == 0:  # the other ranks of the launch see the same folder
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg_yaml.write_text(yaml.safe_dump(resolved, sort_keys=False))
        save_overrides(out_dir)
    return precision, resolved, cfg_yaml, changes


def resume_point(cfg: DictConfig, stage_dir: Path, first: bool) -> tuple[Path | None, dict]:
    """Where the stage continues from: ``resume=auto`` → its newest readable checkpoint (a corrupt newest one falls
    back to the previous); ``resume=<path>`` → that checkpoint, for the first stage not yet finished."""
    resume = cfg.get("resume")
    if not resume:
        return None, {}
    if str(resume) == "auto":
        found = find_resume_checkpoint(stage_dir)
        if found:
            log.info("resuming stage %s from %s", stage_dir.name, found[0])
        return found if found else (None, {})
    if not first:
        return None, {}
    info = validate_checkpoint(resume)
    check_checkpoint_origin(resume, info, cfg.paths.output_dir, stage_dir.name)
    return Path(resume), info


def train_stage(cfg: DictConfig, name: str, stage: DictConfig, model, tokenizer, precision: str, sha: str,
                resolved: dict, cfg_yaml: Path, ckpt: Path | None, ckpt_info: dict,
                extra_callbacks: StageCallbacks | None = None, extra_tags: dict[str, str] | None = None,
                changes: list[str] | None = None):
    stage_dir = Path(cfg.paths.output_dir) / name
    model.hd_active = model.hd is not None and bool(stage.get("hd", True))
    transform = image_transform_for(model, stage.image_aspect_ratio)
    processor = SampleProcessor(tokenizer, get_template(stage.template), transform)
    module = make_module(cfg, stage, model)
    table = format_param_table(module.param_table)
    log.info("stage %s — trainable parameters:\n%s", name, table)
    run_file = stage_dir / "mlflow_run_id.txt"  # beside the checkpoints (a DeepSpeed folder keeps it in its shards)
    run_id = ckpt_info.get("mlflow_run_id") or (run_file.read_text().strip() if ckpt and run_file.exists() else None)
    if run_id and not track.run_exists(cfg.logger.tracking_uri, run_id):
        log.warning("the checkpoint's MLflow run %s is not in %s: the resumed stage gets a new run", run_id,
                    cfg.logger.tracking_uri)
        run_id = None
    tags = {**run_tags(cfg), **track.twins_tag(cfg.model), **(extra_tags or {})}
    track.ensure_store(cfg.logger.tracking_uri, cfg.logger.experiment_name)
    logger = instantiate(cfg.logger, run_name=f"{track.run_label(tags)}-{name}", run_id=run_id, tags={
        "stage": name, "git_sha": sha, "run_group": str(cfg.paths.output_dir), **tags}, _convert_="all")
    callbacks = stage_callbacks(cfg, name, tokenizer, processor, extra_callbacks)
    preempt = next((cb for cb in callbacks if isinstance(cb, StepCheckpoints)), None)
    if preempt is None:
        log.warning("stage %s: callbacks.step_checkpoints is off: no step checkpoints, and a SIGTERM ends the stage "
                    "without one (resume=auto then restarts it)", name)
    trainer = instantiate(cfg.trainer, _partial_=True, _convert_="all")(
        max_epochs=stage.epochs, max_steps=stage.max_steps, gradient_clip_val=stage.gradient_clip_val,
        precision=precision, strategy=build_strategy(stage.get("strategy"), model, stage.micro_batch_size,
                                                      precision=precision),
        logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=str(stage_dir))
    world = world_size(trainer)
    accum = accumulation(stage, world)
    trainer.accumulate_grad_batches = accum
    image_tokens = model.hd.max_num_tokens if model.hd_active else model.num_image_tokens
    data = build_data(cfg, name, processor, stage.micro_batch_size, accum, tokenizer.pad_token_id, image_tokens,
                      packed=module.packing)
    module.mlflow_run_id, module.run_dir, module.stage_name = logger.run_id, str(stage_dir.parent.resolve()), name
    if trainer.is_global_zero and logger.run_id:
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(logger.run_id, run_file)
    budget = stage.get("micro_batch_tokens")
    batch_info = {"train/world_size": world, "train/accumulation": accum,
                  "train/global_batch" + ("_tokens" if budget else ""): (budget or stage.micro_batch_size) * accum * world}
    log.info("stage %s: strategy %s, precision %s, %d process(es) × micro batch %s × accumulation %d = global "
             "batch %s", name, strategy_name(stage.get("strategy")), precision, world,
             f"≤ {budget} tokens" if budget else stage.micro_batch_size, accum,
             f"≤ {budget * accum * world} tokens" if budget else stage.micro_batch_size * accum * world)
    if run_id:  # a resumed stage: same run; its params are already there (MLflow refuses changed values)
        track.reopen(logger)
        track.set_tags(logger, {"resumed_from": str(ckpt)})
        track.log_artifact(logger, cfg_yaml)
    else:
        track.log_config(logger, resolved, cfg_yaml)
        track.log_text(logger, table, f"{name}_trainable_parameters.txt")
    if changes:  # MLflow refuses a changed param: the resume's changes are a tag and a text artifact
        track.set_tags(logger, {"resume.config_changes": "; ".join(changes)[:4000]})
        track.log_text(logger, "\n".join(changes) + "\n", "resume_config_changes.txt")
    track.log_metrics(logger, batch_info, step=0)
    fit_kwargs = {"ckpt_path": str(ckpt), "weights_only": True} if ckpt else {}
    trainer.fit(module, datamodule=data, **fit_kwargs)
    if preempt is not None and preempt.preempted is not None:
        logger.finalize("KILLED")
        log.warning("stage %s pre-empted; checkpoint %s. Continue with: python train.py ... "
                    "hydra.run.dir=%s resume=auto", name, preempt.preempted, cfg.paths.output_dir)
        sys.exit(PREEMPTED_EXIT)
    counts = {**data_counts(data, all_ranks=world > 1), **module.data_counts()}
    track.log_metrics(logger, counts, step=trainer.global_step)
    check_trained(name, counts, data, logger)
    ckpt_last = stage_dir / "last.ckpt"
    trainer.save_checkpoint(str(ckpt_last))
    if trainer.is_global_zero:
        consolidate_deepspeed(ckpt_last)  # a DeepSpeed folder → one fp32 file of the trainable weights
    trainer.strategy.barrier("consolidated")
    sharded = strategy_name(stage.get("strategy")) in ("fsdp", "deepspeed")
    result = {"checkpoint": str(ckpt_last), "model_dir": None, "mlflow_run_id": logger.run_id,
              "first_loss": module.first_loss, "last_loss": module.last_loss, "steps": trainer.global_step,
              "data": counts, **{k.split("/")[1]: v for k, v in batch_info.items()}}
    return result, trainer, sharded, logger


def check_trained(name: str, counts: dict[str, float], data, logger) -> None:
    """After a stage's fit, before anything of it is saved: a stage that trained on no sample (all ranks) fails
    with its counts, its MLflow run marked FAILED — no last.ckpt, stage_done.json, model or stage-reuse record."""
    if counts.get("data/trained", 0) > 0:
        return
    logger.finalize("failed")  # Lightning's teardown marked it FINISHED
    reasons = {k[len("data/skipped_"):]: int(v) for k, v in counts.items() if k.startswith("data/skipped_") and v}
    raise EmptyStageError(
        f"stage {name} trained on 0 samples: planned {int(counts.get('data/planned', 0))} = trained 0 + skipped "
        f"{int(counts.get('data/skipped', 0))} {reasons} (all ranks), data {data.shard_dir}. Nothing of the stage was "
        f"saved (no last.ckpt, stage_done.json, model or stage-reuse record) and its MLflow run "
        f"{logger.run_id} is marked FAILED. The log names each skipped sample and why; fix the data and run again.")


def finish_stage(cfg: DictConfig, name: str, stage: DictConfig, model, tokenizer, sha: str, result: dict,
                 stage_dir: Path, logger) -> None:
    """Rank 0, after a stage: the connector file, the model folder (last stage only), then the done marker and
    the stage-reuse record — the only place a stage is recorded. A failure before the done marker leaves the
    MLflow run FAILED and nothing recorded."""
    try:
        _finish_stage(cfg, name, stage, model, tokenizer, sha, result, stage_dir, logger)
    except BaseException:
        if not (stage_dir / DONE_FILE).exists():
            logger.finalize("failed")
        raise
    record(cfg, name, stage_dir, logger.run_id)
    log.info("stage %s done: loss %.4f → %.4f over %d steps; checkpoint %s", name, result["first_loss"] or 0,
             result["last_loss"] or 0, result["steps"], result["checkpoint"])


def _finish_stage(cfg: DictConfig, name: str, stage: DictConfig, model, tokenizer, sha: str, result: dict,
                  stage_dir: Path, logger) -> None:
    connector_file = save_connector(model, stage_dir / "connector.safetensors")
    spec = {"model": portable_model_spec(cfg), "template": stage.template,
            "image_aspect_ratio": stage.image_aspect_ratio, "max_length": cfg.model.max_length,
            "stage": name, "git_sha": sha, "mlflow_run_id": logger.run_id,
            "mlflow_tracking_uri": cfg.logger.tracking_uri, "hd_active": model.hd_active,
            "tags": {**run_tags(cfg), **track.twins_tag(cfg.model)}}
    # The full model folder (what eval.py loads) is written for the last stage only; earlier stages hand on
    # their trainable weights (checkpoint + connector file), as LLaVA's stage 1 saves mm_projector.bin only.
    if name == cfg.run_stages[-1]:
        result["model_dir"] = str(save_model_dir(model, tokenizer, spec, stage_dir / "model"))
    track.log_artifact(logger, connector_file)
    logger.finalize("success")
    result[KEY_FIELD] = finished_key(cfg, name)  # stage reuse takes a finished stage with this key only
    write_json_atomic(result, stage_dir / DONE_FILE)


def portable_model_spec(cfg: DictConfig) -> dict:
    """``cfg.model`` for a model folder's ``lmm_model.yaml``: without the cache paths of a twin run (its tokenizer
    and pretrained-twin folders) — the folder holds the tokenizer and every weight itself — nor the LLM's
    ``attn_implementation``."""
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    # The attention kernel is how this machine ran the LLM, not part of the model: a folder trained with
    # FlashAttention-2 loads anywhere, with transformers' default (SDPA), flash-attn installed or not.
    spec["llm"].pop("attn_implementation", None)
    if spec.get("twin"):
        for part in ("vision", "llm"):
            twin = spec[part].get("twin") or {}
            twin.pop("checkpoint", None)
        spec["llm"].pop("tokenizer", None)
    return spec
