"""``eval.py``: run a trained checkpoint on a set of benchmarks, write LLaVA answer files, score them with the
official-exact scorers, and log everything to MLflow as a child run of the training run."""

from __future__ import annotations

import json
import logging
import math
import re
import time
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
from lmm.tracking.mlflow import flatten, git_sha

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


def run_eval(cfg: DictConfig, checkpoint: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Evaluate ``checkpoint`` with the settings of an ``evaluation`` config node (conf/evaluation/default.yaml);
    its benchmark files must exist (synthetic ones are written by :func:`lmm.synth.world.prepare_eval`)."""
    import mlflow

    model_dir = resolve_model_dir(checkpoint)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, spec = load_model_dir(model_dir, device)
    template = get_template(cfg.template or spec.get("template") or "vicuna_v1")
    transform = image_transform_for(model, cfg.image_aspect_ratio or spec.get("image_aspect_ratio", "pad"))
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_id = cfg.model_id or model_dir.parent.parent.name

    tracking_uri = cfg.tracking_uri or spec.get("mlflow_tracking_uri") or f"sqlite:///{out_dir}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    same_store = bool(spec.get("mlflow_tracking_uri")) and tracking_uri == spec.get("mlflow_tracking_uri")
    parent = spec.get("mlflow_run_id") if same_store else None
    exp_name = cfg.experiment_name
    exp = client.get_experiment_by_name(exp_name)
    exp_id = exp.experiment_id if exp else client.create_experiment(exp_name)
    tags = {**(spec.get("tags") or {}), "kind": "eval", "checkpoint": str(model_dir), "git_sha": git_sha(),
            "template": template.name}
    if parent:
        tags["mlflow.parentRunId"] = parent
        tags["train_run_id"] = parent
    run = client.create_run(exp_id, tags=tags, run_name=f"eval-{model_id}")
    run_id = run.info.run_id
    params = {
        "benchmarks": ",".join(cfg.benchmarks),
        "batch_size": cfg.batch_size,
        "limit": cfg.limit,
        "checkpoint": str(model_dir),
        "data_root": str(cfg.data_root),
        "decoding": "greedy",
    }
    for k, v in params.items():
        client.log_param(run_id, k, "" if v is None else v)

    results: dict[str, Any] = {}
    for name in cfg.benchmarks:
        bench = get_benchmark(name)
        options = dict((cfg.get("benchmark_options") or {}).get(name) or {})
        if options:
            bench = bench.with_options(**options)
        if bench.needs_judge and not cfg.get("judge", {}).get("base_url"):
            msg = (
                f"{name}: skipped — it is scored by an LLM judge and no judge is configured (judge.base_url)"
            )
            log.warning(msg)
            results[name] = {"skipped": msg}
            client.set_tag(run_id, f"skipped.{name}", msg)
            continue
        questions = bench.questions(cfg.data_root)
        if cfg.limit:
            questions = questions[: cfg.limit]
        max_new = cfg.max_new_tokens or bench.max_new_tokens
        t0 = time.perf_counter()
        answers = answer_questions(
            model, tokenizer, template, questions, transform, max_new, cfg.batch_size, model_id
        )
        seconds = time.perf_counter() - t0
        ans_path = out_dir / name / "answers.jsonl"
        write_answers(ans_path, answers)
        if bench.needs_judge:
            from lmm.evaluation.judge import run_judge

            judgments = [
                run_judge(
                    name,
                    ans_path,
                    cfg.data_root,
                    out_dir / name / "judgments",
                    **OmegaConf.to_container(cfg.judge, resolve=True),
                )
            ]
            scores = bench.score(ans_path, cfg.data_root, judgments=judgments)
        elif cfg.limit:
            scores = {
                "note": "limit set: answers written, not scored (official scoring needs every question)"
            }
        else:
            scores = bench.score(ans_path, cfg.data_root)
        scores["answers_per_s"] = len(answers) / max(seconds, 1e-9)
        (out_dir / name / "scores.json").write_text(json.dumps(scores, indent=2, default=str))
        for k, v in _numeric(scores).items():
            client.log_metric(run_id, f"eval/{name}/{k}", v)
        client.log_artifact(run_id, str(ans_path), f"eval/{name}")
        client.log_artifact(run_id, str(out_dir / name / "scores.json"), f"eval/{name}")
        if parent and isinstance(scores.get("score"), (int, float)):
            client.log_metric(parent, f"eval/{name}/score", float(scores["score"]))
        results[name] = scores
        log.info(
            "%s: score %s (%d answers, %.1f answers/s)",
            name,
            scores.get("score"),
            len(answers),
            scores["answers_per_s"],
        )
    client.set_terminated(run_id)
    return {"results": results, "run_id": run_id, "tracking_uri": tracking_uri, "output_dir": str(out_dir)}
