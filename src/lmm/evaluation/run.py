"""``eval.py``: run a trained checkpoint on a set of benchmarks, write LLaVA answer files, score them with the
official-exact scorers, and log everything to MLflow as a child run of the training run."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lmm.data.hd_cells import image_transform_for
from lmm.evaluation.answers import write_answers
from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.generate import answer_questions
from lmm.models.checkpoint import load_model_dir
from lmm.text.templates import get_template
from lmm.tracking.mlflow import ensure_store, flatten, git_sha, run_label

log = logging.getLogger(__name__)


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, or a training output folder (its last stage's ``model/``)."""
    path = Path(path)
    if (path / "lmm_model.yaml").exists():
        return path
    for stage in ("finetune", "pretrain"):
        if (path / stage / "model" / "lmm_model.yaml").exists():
            return path / stage / "model"
    raise FileNotFoundError(
        f"no lmm model folder at {path} (expected lmm_model.yaml, or <stage>/model/ in it)"
    )


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    """Finite numbers of a score dict, under metric names MLflow accepts (other characters become ``_``)."""
    return {re.sub(r"[^\w\-. :/]", "_", k): float(v) for k, v in flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


@dataclass
class EvalRun:
    """What every benchmark of one evaluation shares: the model, how it reads its inputs, and its MLflow run."""

    cfg: DictConfig
    model: Any
    tokenizer: Any
    template: Any
    transform: Any
    model_id: str
    out_dir: Path
    client: Any = None
    run_id: str = ""
    parent: str | None = None  # the training run (same store), which gets eval/<bench>/score too
    tracking_uri: str = ""


def run_eval(cfg: DictConfig, checkpoint: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Evaluate ``checkpoint`` with the settings of an ``evaluation`` config node (conf/evaluation/default.yaml);
    its benchmark files must exist (synthetic ones are written by :func:`lmm.synth.world.prepare_eval`)."""
    ev, spec = load_for_eval(cfg, checkpoint, output_dir)
    open_run(ev, spec)
    results = {name: evaluate_benchmark(ev, name) for name in cfg.benchmarks}
    ev.client.set_terminated(ev.run_id)
    return {"results": results, "run_id": ev.run_id, "tracking_uri": ev.tracking_uri, "output_dir": str(ev.out_dir)}


def load_for_eval(cfg: DictConfig, checkpoint: str | Path, output_dir: str | Path) -> tuple[EvalRun, dict]:
    """The model folder's model (on ``cfg.device`` or the GPU if any), tokenizer, template and image transform."""
    model_dir = resolve_model_dir(checkpoint)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, spec = load_model_dir(model_dir, device)
    if cfg.get("dtype"):  # the official evaluation runs the model in fp16 (bf16 where fp16 is not supported)
        model = model.to(getattr(torch, cfg.dtype))
    template = get_template(cfg.template or spec.get("template") or "vicuna_v1")
    transform = image_transform_for(model, cfg.image_aspect_ratio or spec.get("image_aspect_ratio", "pad"))
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "model_dir": str(model_dir)}
    return EvalRun(cfg, model, tokenizer, template, transform, cfg.model_id or model_dir.parent.parent.name,
                   out_dir), spec


def open_run(ev: EvalRun, spec: dict) -> None:
    """The evaluation's MLflow run: a child of the training run when both live in the same store."""
    import mlflow

    cfg = ev.cfg
    ev.tracking_uri = (cfg.tracking_uri or spec.get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                       or f"sqlite:///{Path('mlflow.db').resolve()}")  # the project's store (run from its root)
    ev.client = client = mlflow.MlflowClient(tracking_uri=ev.tracking_uri)
    same_store = bool(spec.get("mlflow_tracking_uri")) and ev.tracking_uri == spec.get("mlflow_tracking_uri")
    ev.parent = spec.get("mlflow_run_id") if same_store else None
    exp_id = ensure_store(ev.tracking_uri, cfg.experiment_name)
    tags = {**(spec.get("tags") or {}), **(cfg.get("tags") or {}), "kind": "eval", "checkpoint": spec["model_dir"], "git_sha": git_sha(),
            "template": ev.template.name}
    if ev.parent:
        tags["mlflow.parentRunId"] = ev.parent
        tags["train_run_id"] = ev.parent
    ev.run_id = client.create_run(exp_id, tags=tags, run_name=f"{run_label(tags, ev.model_id)}-eval").info.run_id
    params = {"benchmarks": ",".join(cfg.benchmarks), "batch_size": cfg.batch_size, "limit": cfg.limit,
              "checkpoint": spec["model_dir"], "data_root": str(cfg.data_root), "decoding": "greedy",
              "dtype": cfg.get("dtype") or str(next(ev.model.parameters()).dtype).replace("torch.", "")}
    for k, v in params.items():
        client.log_param(ev.run_id, k, "" if v is None else v)


def evaluate_benchmark(ev: EvalRun, name: str) -> dict[str, Any]:
    """Answer one benchmark's questions, write LLaVA's answer file, score it officially (or skip it with the
    reason: a judged benchmark without a judge), log scores and files to MLflow."""
    cfg, client = ev.cfg, ev.client
    bench = get_benchmark(name)
    options = dict((cfg.get("benchmark_options") or {}).get(name) or {})
    if options:
        bench = bench.with_options(**options)
    if bench.needs_judge and not cfg.get("judge", {}).get("base_url"):
        msg = f"{name}: skipped — it is scored by an LLM judge and no judge is configured (judge.base_url)"
        log.warning(msg)
        client.set_tag(ev.run_id, f"skipped.{name}", msg)
        return {"skipped": msg}
    questions = bench.questions(cfg.data_root)
    if cfg.limit:
        questions = questions[: cfg.limit]
    t0 = time.perf_counter()
    answers = answer_questions(ev.model, ev.tokenizer, ev.template, questions, ev.transform,
                               cfg.max_new_tokens or bench.max_new_tokens, cfg.batch_size, ev.model_id)
    seconds = time.perf_counter() - t0
    ans_path = ev.out_dir / name / "answers.jsonl"
    write_answers(ans_path, answers)
    scores = score_answers(cfg, bench, name, ans_path, ev.out_dir)
    scores["answers_per_s"] = len(answers) / max(seconds, 1e-9)
    (ev.out_dir / name / "scores.json").write_text(json.dumps(scores, indent=2, default=str))
    for k, v in _numeric(scores).items():
        client.log_metric(ev.run_id, f"eval/{name}/{k}", v)
    client.log_artifact(ev.run_id, str(ans_path), f"eval/{name}")
    client.log_artifact(ev.run_id, str(ev.out_dir / name / "scores.json"), f"eval/{name}")
    if isinstance(scores.get("split"), str):  # which split the number comes from (VQAv2 / VizWiz: val or test-dev)
        for run in (ev.run_id, ev.parent) if ev.parent else (ev.run_id,):
            client.set_tag(run, f"split.{name}", scores["split"])
    if isinstance(scores.get("score"), (int, float)):  # the headline as eval/<bench>: MLflow's Compare view
        for run in (ev.run_id, ev.parent) if ev.parent else (ev.run_id,):  # shows Table 2's columns
            client.log_metric(run, f"eval/{name}", float(scores["score"]))
    if ev.parent and isinstance(scores.get("score"), (int, float)):
        client.log_metric(ev.parent, f"eval/{name}/score", float(scores["score"]))
    log.info("%s: score %s (%d answers, %.1f answers/s)", name, scores.get("score"), len(answers),
             scores["answers_per_s"])
    return scores


def score_answers(cfg: DictConfig, bench, name: str, ans_path: Path, out_dir: Path) -> dict[str, Any]:
    """The official score of an answer file (with the judge's verdicts for a judged benchmark); with ``limit``
    nothing is scored (official scoring needs every question)."""
    if bench.needs_judge:
        from lmm.evaluation.judge import run_judge

        judgments = [run_judge(name, ans_path, cfg.data_root, out_dir / name / "judgments",
                               **OmegaConf.to_container(cfg.judge, resolve=True))]
        return bench.score(ans_path, cfg.data_root, judgments=judgments)
    if cfg.limit:
        return {"note": "limit set: answers written, not scored (official scoring needs every question)"}
    return bench.score(ans_path, cfg.data_root)
