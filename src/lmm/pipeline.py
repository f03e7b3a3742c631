"""What the entry points run: the config checked, the synthetic world prepared (at ``scale=tiny``), every input of
the run checked (:mod:`lmm.training.inputs`), then training and evaluation wired together; and how ``train.py`` /
``eval.py`` end on a mistake in the command line, the config or an input: one line on stderr, ``error: <key>: <what>
— <fix>``, and exit status 2 (:func:`one_line_errors`, :func:`run_main`). The only module that sees :mod:`lmm.training`,
:mod:`lmm.evaluation` and :mod:`lmm.synth` at once; it imports them only once the arguments are checked, so a
mistake is reported in a second, before any model code is loaded."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmm.common import plain
from lmm.training.input_checks import InputError, Missing, format_missing, problem
from lmm.training.inputs import benchmark_root, check_config, check_inputs, missing_inputs

USAGE_EXIT = 2
# The errors a command line, a config or an input file causes (module, class): printed as one line, exit 2. Looked up
# in sys.modules (an error of a module not imported cannot have been raised), so reporting imports nothing.
ONE_LINE_ERRORS = (
    ("lmm.training.input_checks", "InputError"),  # MissingInputsError: one line per missing input
    ("lmm.data.sources", "UnknownSourceError"),
    ("lmm.training.run", "ConfigError"),
    ("lmm.training.plan", "PlanError"),
    ("lmm.training.run_folder", "RunFolderError"),
    ("lmm.training.strategies", "StrategyError"),
    ("lmm.training.module", "CompileError"),
    ("lmm.training.checkpointing", "ResumeError"),
    ("lmm.models.checkpoint", "RemoteCodeRefused"),
    ("lmm.models.checkpoint", "OutputFolderError"),
    ("lmm.evaluation.benchmarks.base", "BenchmarkDataError"),
)
_OURS = "LMM_SET_HYDRA_FULL_ERROR"  # HYDRA_FULL_ERROR was set by run_main, not by a developer (child processes)


def train(cfg: DictConfig) -> dict[str, Any]:
    """``train.py``: check the config → prepare → check every input → train every stage → evaluate the final model
    (``eval.after_training``, rank 0). A missing input stops the run before any folder, model or MLflow run is
    made; under ``plan=true`` the missing inputs are printed above the plan, which needs none of them."""
    check_config(cfg, resolve=not cfg.get("plan"))  # a plan may run where Hydra's resolvers are not registered
    if cfg.get("plan"):
        missing = missing_inputs(cfg, prepared=False)
        if missing:
            print(f"warning: {format_missing(missing)}\n(the plan needs none of them; a run would stop here)\n")
    else:
        check_inputs(cfg, prepared=False)  # what the twins' preparation does not write: fails in a second
        from lmm.synth.world import prepare_training

        prepare_training(cfg)
        check_inputs(cfg)
    from lmm.training.run import run_training

    results = run_training(cfg, extra_callbacks=lambda stage, tok, proc: during_training(cfg, stage, tok, proc))
    if "plan" in results or not results["stages"] or not results.get("is_global_zero", True):
        return results
    if cfg.get("eval") and cfg.eval.after_training:
        from lmm.evaluation.run import run_eval
        from lmm.synth.world import prepare_eval
        from lmm.training.components import run_tags

        out_dir = Path(cfg.paths.output_dir)
        eval_cfg = OmegaConf.merge(cfg.eval, {"tracking_uri": cfg.logger.tracking_uri,
                                              "experiment_name": cfg.logger.experiment_name,
                                              "tags": run_tags(cfg)})  # this run's (its stages may be reused)
        results["eval"] = run_eval(prepare_eval(eval_cfg), out_dir, out_dir / "eval")
    return results


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``eval.py``: check ``checkpoint=`` and the benchmarks' folder, prepare the (synthetic) benchmarks, then
    evaluate ``cfg.checkpoint``."""
    checkpoint = checkpoint_arg(cfg)
    root = benchmark_root(cfg.eval)
    if root is not None and (why := problem(root)):
        raise InputError(str(Missing(root, why)))
    from lmm.evaluation.run import resolve_model_dir, run_eval
    from lmm.synth.world import prepare_eval

    try:
        resolve_model_dir(checkpoint)
    except FileNotFoundError as e:
        raise InputError(f"checkpoint: {e} — give a training run whose last stage finished, or its "
                         f"<stage>/model folder") from None
    return run_eval(prepare_eval(cfg.eval), checkpoint, cfg.output_dir)


def checkpoint_arg(cfg: DictConfig) -> str:
    """``checkpoint=``: given, and there."""
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.get("checkpoint"):
        raise InputError("checkpoint= is required: the model folder or training run to score, e.g. python eval.py "
                         "checkpoint=outputs/<run>")
    path = str(cfg.checkpoint)
    if not Path(path).expanduser().exists():
        raise InputError(f"checkpoint: {path} does not exist — give a training run folder (outputs/<run>) or a model "
                         f"folder (outputs/<run>/finetune/model)")
    return path


def during_training(cfg: DictConfig, stage: str, tokenizer, processor) -> list:
    """Stage 2's small benchmarks scored every ``eval.during_training.every_n_epochs`` (when enabled)."""
    during = (cfg.get("eval") or {}).get("during_training") or {}
    if not during.get("enabled") or stage != "finetune":
        return []
    from lmm.evaluation.during_training import BenchmarkDuringTraining

    return [BenchmarkDuringTraining(
        tokenizer, processor.template, processor.image_transform, list(during.benchmarks),
        during.get("data_root") or cfg.eval.data_root, during.get("every_n_epochs", 1), cfg.eval.batch_size,
        plain(cfg.eval.get("benchmark_options")))]


def developer() -> bool:
    """``LMM_TRACEBACK=1``, or ``HYDRA_FULL_ERROR=1`` set by a developer (not by :func:`run_main`): every error keeps
    its full traceback."""
    env = os.environ
    return env.get("LMM_TRACEBACK") == "1" or (env.get("HYDRA_FULL_ERROR") == "1" and not env.get(_OURS))


def _exit_if_usage_error(error: Exception) -> None:
    line = error_line(error, os.path.basename(sys.argv[0]) or "train.py")
    if line is not None:
        print(line, file=sys.stderr)
        sys.exit(USAGE_EXIT)


def one_line_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a Hydra task function (under ``@hydra.main``): a config or input error it raises is printed as one
    line (:func:`error_line`) and the process exits 2 — before Hydra would add its own report."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        if developer():
            return task(cfg)
        try:
            return task(cfg)
        except Exception as e:
            _exit_if_usage_error(e)
            raise

    return wrapped


def run_main(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function so that a mistake on the command line (an unknown key or option, a value Hydra
    cannot parse) ends in one line on stderr and exit status 2, like the errors :func:`one_line_errors` reports;
    any other exception keeps its traceback. With :func:`developer` set, every error keeps its full traceback."""
    if developer():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        return main()
    os.environ["HYDRA_FULL_ERROR"] = os.environ[_OURS] = "1"  # Hydra then raises its errors instead of a report
    try:
        return main()
    except Exception as e:
        _exit_if_usage_error(e)
        raise


def error_line(error: BaseException, script: str = "train.py") -> str | None:
    """``error: <key>: <what> — <fix>`` for a config or input error (:data:`ONE_LINE_ERRORS`, omegaconf's missing
    value / unknown key / unresolvable interpolation, Hydra's composition errors); None for any other."""
    from hydra.errors import (
        CompactHydraException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
    )

    listing = f"python {script} --cfg job prints the config"
    if isinstance(error, MissingMandatoryValue):
        return (f"error: {error.full_key}: a value is required (??? in the config) — set it on the command line: "
                f"{error.full_key}=<value>")
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        return f"error: {error.full_key}: not a key of the config — check its spelling ({listing})"
    if isinstance(error, InterpolationResolutionError):
        what = str(error.msg).strip().splitlines()[0] if str(error.msg).strip() else "cannot be resolved"
        return f"error: {error.full_key}: {what} — fix the value, or set what it refers to"
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"error: {group}={option}: no such option — the options of {group}: {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        what, _, see = " ".join(error.message.split()).partition(" See ")
        return (f"error: {error.override}: Hydra cannot parse this override ({what}) — fix its syntax or quote it"
                + (f"; see {see.removesuffix(' for details')}" if see else ""))
    if isinstance(error, CompactHydraException) and not isinstance(error, InstantiationException):
        cause = error.__cause__
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):  # an override of a key the config lacks
            add = [ln.split(" use ", 1)[1] for ln in str(error).splitlines() if ln.startswith("To append")]
            return (f"error: {cause.full_key}: not a key of the config — check its spelling ({listing})"
                    + (f", or add a new key with {add[0]}" if add else ""))
        return "error: " + " ".join(str(error).split())
    for module, name in ONE_LINE_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return f"error: {error}"
    return None
