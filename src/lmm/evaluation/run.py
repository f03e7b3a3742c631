"""``eval.py``: run a trained checkpoint on a set of benchmarks, write LLaVA answer files, score them with the
official-exact scorers, and log everything to MLflow (a child run of the training run when it lands in the
training run's store; :func:`tracking_uri_for`).

A split whose ground truth only a server holds (VQAv2 test-dev, VizWiz test: ``eval=official``) is not scored
here: its submission file is written (:mod:`lmm.evaluation.submission`) and its result says ``split``,
``submission`` and where to score it, with no number. ``eval.submissions`` writes the official files of the
locally scored benchmarks too (GQA, MMBench, SEED). The run records the split of every benchmark (``split.<bench>``
tags) and whether its benchmark files were the synthetic twins (``benchmark_data`` tag: synthetic / real / mixed).
Beside each ``scores.json`` it writes ``per_question.json`` (:data:`PER_QUESTION`: every question's score in [0, 1],
from :meth:`Benchmark.score_questions`) where the headline is a mean over questions. Judged benchmarks are scored by
``judge.kind``: ``gpt`` (an LLM endpoint at ``judge.base_url``; skipped without one) or ``rule`` (MM-Vet graded by
:mod:`lmm.evaluation.rule_grader`; LLaVA-W skipped).

Answers are written as they come and resumed by a re-run with the same settings (:mod:`lmm.evaluation.partial`);
a missing or corrupt image stops the evaluation with the benchmark, question and file, the answers before it kept.
A failed evaluation ends its MLflow run FAILED (KILLED when interrupted), never RUNNING."""

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
from lmm.evaluation.answers import read_predictions
from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.benchmarks.base import QuestionImageError
from lmm.evaluation.generate import answer_questions
from lmm.evaluation.judge import judge_skip_reason, run_judge
from lmm.evaluation.partial import PARTIAL, AnswerLog, answer_key
from lmm.evaluation.submission import SUBMISSIONS, submission_path, write_submission
from lmm.models.checkpoint import load_model_dir
from lmm.text.templates import get_template
from lmm.tracking.mlflow import ensure_store, flatten, git_sha, run_label, twins_tag

log = logging.getLogger(__name__)
PER_QUESTION = "per_question.json"  # beside scores.json: {benchmark, unit, scores: {question key: score in [0, 1]}}


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
    model_dir: str = ""
    aspect: str = ""


def run_eval(cfg: DictConfig, checkpoint: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Evaluate ``checkpoint`` with the settings of an ``eval`` config node (conf/eval/default.yaml, official.yaml);
    its benchmark files must exist (synthetic ones are written by :func:`lmm.synth.world.prepare_eval`). When
    anything fails, the MLflow run ends FAILED (KILLED on an interrupt) with the error as its ``error`` tag."""
    ev, spec = load_for_eval(cfg, checkpoint, output_dir)
    try:
        open_run(ev, spec)
        results = {name: evaluate_benchmark(ev, name) for name in cfg.benchmarks}
    except BaseException as e:
        _end_failed(ev, e)
        raise
    ev.client.set_terminated(ev.run_id)
    return {"results": results, "run_id": ev.run_id, "tracking_uri": ev.tracking_uri, "output_dir": str(ev.out_dir)}


def _end_failed(ev: EvalRun, error: BaseException) -> None:
    """End the evaluation's MLflow run (if it was created) as FAILED, or KILLED for an interrupt, without hiding
    ``error`` if the store cannot be reached."""
    if not ev.run_id:
        return
    status = "FAILED" if isinstance(error, Exception) else "KILLED"
    try:
        ev.client.set_tag(ev.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        ev.client.set_terminated(ev.run_id, status)
    except Exception as e:  # the store itself may be what failed
        log.warning("could not mark MLflow run %s %s: %s", ev.run_id, status, e)


def load_for_eval(cfg: DictConfig, checkpoint: str | Path, output_dir: str | Path) -> tuple[EvalRun, dict]:
    """The model folder's model (on ``cfg.device`` or the GPU if any), tokenizer, template and image transform."""
    model_dir = resolve_model_dir(checkpoint)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, spec = load_model_dir(model_dir, device,
                                            trust_remote_code=bool(cfg.get("trust_remote_code", False)))
    if cfg.get("dtype"):  # the official evaluation runs the model in fp16 (bf16 where fp16 is not supported)
        model = model.to(getattr(torch, cfg.dtype))
    template = get_template(cfg.template or spec.get("template") or "vicuna_v1")
    aspect = cfg.image_aspect_ratio or spec.get("image_aspect_ratio", "pad")
    transform = image_transform_for(model, aspect)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "model_dir": str(model_dir)}
    return EvalRun(cfg, model, tokenizer, template, transform, cfg.model_id or model_dir.parent.parent.name,
                   out_dir, model_dir=str(model_dir), aspect=str(aspect)), spec


def tracking_uri_for(explicit: str | None, recorded: str | None) -> str:
    """The store of an evaluation: ``eval.tracking_uri`` when given, else the user's ``MLFLOW_TRACKING_URI``, else
    the store the model folder's training run logged to (``recorded``), else the project's ``mlflow.db`` (eval.py
    runs from the repository root). The user's setting always beats what a model folder says."""
    return (explicit or os.environ.get("MLFLOW_TRACKING_URI") or recorded
            or f"sqlite:///{Path('mlflow.db').resolve()}")


def open_run(ev: EvalRun, spec: dict) -> None:
    """The evaluation's MLflow run (store: :func:`tracking_uri_for`): a child of the training run when it lands
    in the store the training run logged to."""
    import mlflow

    cfg = ev.cfg
    recorded = spec.get("mlflow_tracking_uri")
    ev.tracking_uri = tracking_uri_for(cfg.tracking_uri, recorded)
    exp_id = ensure_store(ev.tracking_uri, cfg.experiment_name)  # first: a client migrates a new sqlite store
    ev.client = client = mlflow.MlflowClient(tracking_uri=ev.tracking_uri)  # (racing another job) on creation
    ev.parent = spec.get("mlflow_run_id") if recorded and ev.tracking_uri == recorded else None
    tags = {**twins_tag(spec.get("model")),  # a model folder from before the training runs' `twins` tag
            **(spec.get("tags") or {}), **(cfg.get("tags") or {}), "kind": "eval", "checkpoint": spec["model_dir"],
            "git_sha": git_sha(), "template": ev.template.name, "benchmark_data": benchmark_data(cfg)}
    if ev.parent:
        tags["mlflow.parentRunId"] = ev.parent
        tags["train_run_id"] = ev.parent
    ev.run_id = client.create_run(exp_id, tags=tags, run_name=f"{run_label(tags, ev.model_id)}-eval").info.run_id
    synthetic = cfg.get("synthetic_benchmarks")
    params = {"benchmarks": ",".join(cfg.benchmarks), "batch_size": cfg.batch_size, "limit": cfg.limit,
              "checkpoint": spec["model_dir"], "data_root": str(cfg.data_root), "decoding": "greedy",
              "dtype": cfg.get("dtype") or str(next(ev.model.parameters()).dtype).replace("torch.", ""),
              "mode": cfg.get("mode") or "fast",
              "synthetic_benchmarks": json.dumps(OmegaConf.to_container(synthetic) if synthetic else None)}
    for k, v in params.items():
        client.log_param(ev.run_id, k, "" if v is None else v)


def benchmark_data(cfg: DictConfig) -> str:
    """``synthetic`` when every benchmark's files are a synthetic twin (:meth:`Benchmark.is_synthetic`), ``real``
    when none is, ``mixed`` otherwise: whether the numbers can stand beside the paper's."""
    synthetic = {get_benchmark(name).is_synthetic(cfg.data_root) for name in cfg.benchmarks}
    return "mixed" if len(synthetic) > 1 else "synthetic" if True in synthetic else "real"


def _answer_log(ev: EvalRun, name: str, questions: list, max_new_tokens: int) -> AnswerLog:
    """The benchmark's answer files, keyed by everything its answers depend on (:mod:`lmm.evaluation.partial`)."""
    cfg = ev.cfg
    params = next(ev.model.parameters())
    settings = {"benchmark": name, "template": ev.template.name, "max_new_tokens": max_new_tokens,
                "dtype": str(params.dtype).removeprefix("torch."), "batch_size": cfg.batch_size,
                "model_id": ev.model_id, "image_aspect_ratio": ev.aspect, "device": params.device.type}
    return AnswerLog(ev.out_dir / name, answer_key(ev.model_dir, settings, questions), questions)


def evaluate_benchmark(ev: EvalRun, name: str) -> dict[str, Any]:
    """Answer one benchmark's questions (resuming the answers of an interrupted run with the same settings),
    write LLaVA's answer file, score it officially (or skip it with the reason: a judged benchmark without a
    judge), log scores and files to MLflow."""
    cfg, client = ev.cfg, ev.client
    bench = get_benchmark(name)
    options = dict((cfg.get("benchmark_options") or {}).get(name) or {})
    if options:
        bench = bench.with_options(**options)
    reason = judge_skip_reason(name, **OmegaConf.to_container(cfg.get("judge") or {})) if bench.needs_judge else None
    if reason:
        msg = f"{name}: skipped — {reason}"
        log.warning(msg)
        client.set_tag(ev.run_id, f"skipped.{name}", msg)
        return {"skipped": msg}
    questions = bench.questions(cfg.data_root)  # image names checked here, before anything is generated
    if cfg.limit:
        questions = questions[: cfg.limit]
    max_new_tokens = cfg.max_new_tokens or bench.max_new_tokens
    answers_log = _answer_log(ev, name, questions, max_new_tokens)
    kept = answers_log.resume()
    t0 = time.perf_counter()
    try:
        new = answer_questions(ev.model, ev.tokenizer, ev.template, questions[len(kept):], ev.transform,
                               max_new_tokens, cfg.batch_size, ev.model_id, on_batch=answers_log.append)
    except QuestionImageError as e:
        raise QuestionImageError(
            f"{name}: {e}. The {answers_log.n_saved} answer(s) before it are saved in {answers_log.folder / PARTIAL}; fix or "
            "remove the image and run again into the same output folder with the same settings: only the "
            "remaining questions are generated") from e
    seconds = time.perf_counter() - t0
    ans_path = answers_log.finish()
    scores, per_question = score_answers(cfg, bench, name, ans_path, ev.out_dir, ev.model_id)
    scores["n_resumed"] = len(kept)
    if new:
        scores["answers_per_s"] = len(new) / max(seconds, 1e-9)
    (ev.out_dir / name / "scores.json").write_text(json.dumps(scores, indent=2, default=str))
    for k, v in _numeric(scores).items():
        client.log_metric(ev.run_id, f"eval/{name}/{k}", v)
    client.log_artifact(ev.run_id, str(ans_path), f"eval/{name}")
    client.log_artifact(ev.run_id, str(ev.out_dir / name / "scores.json"), f"eval/{name}")
    if per_question is not None:
        path = ev.out_dir / name / PER_QUESTION
        path.write_text(json.dumps({"benchmark": name, "unit": bench.QUESTION_UNIT, "scores": per_question}, indent=1))
        client.log_artifact(ev.run_id, str(path), f"eval/{name}")
    if scores.get("submission"):
        client.log_artifact(ev.run_id, scores["submission"], f"eval/{name}")
    if isinstance(scores.get("split"), str):  # which split the number comes from (VQAv2 / VizWiz: val or test-dev)
        for run in (ev.run_id, ev.parent) if ev.parent else (ev.run_id,):
            client.set_tag(run, f"split.{name}", scores["split"])
    if isinstance(scores.get("score"), (int, float)):  # the headline as eval/<bench>: MLflow's Compare view
        for run in (ev.run_id, ev.parent) if ev.parent else (ev.run_id,):  # shows Table 2's columns
            client.log_metric(run, f"eval/{name}", float(scores["score"]))
    if ev.parent and isinstance(scores.get("score"), (int, float)):
        client.log_metric(ev.parent, f"eval/{name}/score", float(scores["score"]))
    log.info("%s: score %s (%d answers, %d generated, %d kept from an earlier run)", name, scores.get("score"),
             len(kept) + len(new), len(new), len(kept))
    return scores


def score_answers(cfg: DictConfig, bench, name: str, ans_path: Path, out_dir: Path,
                  model_id: str = "lmm") -> tuple[dict[str, Any], dict[str, float] | None]:
    """The official score of an answer file (with the judge's verdicts for a judged benchmark) and its
    per-question scores (``Benchmark.question_scores``; None where the headline is no mean over questions or
    nothing is scored); with ``limit`` nothing is scored (official scoring needs every question). A split scored
    on a server gets its submission file instead of a number; with ``submissions`` a locally scored benchmark's
    official file is written too."""
    judgments = None
    if bench.needs_judge:
        judgments = [run_judge(name, ans_path, cfg.data_root, out_dir / name / "judgments",
                               **OmegaConf.to_container(cfg.judge, resolve=True))]
    elif cfg.limit:
        return {"note": "limit set: answers written, not scored (official scoring needs every question)"}, None
    elif bench.scored_on:
        upload = submission_path(name, out_dir / name, model_id)
        return server_submission(bench, name, ans_path, cfg.data_root, upload), None
    if bench.QUESTION_UNIT is None:
        scores, per_question = bench.score(ans_path, cfg.data_root, judgments=judgments), None
    else:
        scores, per_question = bench.score_questions(ans_path, cfg.data_root, judgments=judgments)
    if cfg.get("submissions") and name in SUBMISSIONS:
        upload = submission_path(name, out_dir / name, model_id)
        write_submission(bench, read_predictions(ans_path).records, cfg.data_root, upload)
        scores["submission"] = str(upload)
    return scores, per_question


def server_submission(bench, name: str, ans_path: Path, data_root, upload: Path) -> dict[str, Any]:
    """The result of a split whose ground truth only ``bench.scored_on`` holds: its submission file, no score."""
    answers = read_predictions(ans_path)
    counts = write_submission(bench, answers.records, data_root, upload)
    return {"benchmark": name, "split": bench.split, "submission": str(upload), "scored_on": bench.scored_on,
            "note": f"score on {bench.scored_on}: upload {upload} to the {name} {bench.split} challenge (its ground "
                    "truth is not public)", "n_questions": len(answers.records),
            "n_unparsable": answers.n_unparsable, **counts, "warnings": []}
