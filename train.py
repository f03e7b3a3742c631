"""Train LLaVA-1.5 (or a variant) through the stages the config names. `python train.py --help` lists the groups."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lmm.pipeline import one_line_errors, run_main, train  # noqa: E402  (light: model code is imported later)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@one_line_errors  # a config or input error: one line on stderr, exit 2
def main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    if not result.get("is_global_zero", True) or "plan" in result:
        return None  # other ranks of a multi-process run (rank 0 reports), or a plan (printed already)
    for name, st in result["stages"].items():
        model = f"; model: {st['model_dir']}" if st["model_dir"] else ""
        print(f"[{name}] loss {st['first_loss']:.4f} -> {st['last_loss']:.4f} ({st['steps']} steps); "
              f"checkpoint: {st['checkpoint']}{model}; mlflow run: {st['mlflow_run_id']}")
    for name, scores in (result.get("eval") or {}).get("results", {}).items():
        print(f"[eval {name}] score: {scores.get('score', scores.get('skipped', scores.get('note')))}")
    print(f"MLflow store: {result['tracking_uri']}  (make ui)")
    last = list(result["stages"].values())[-1] if result["stages"] else None
    return last["last_loss"] if last else None


if __name__ == "__main__":
    run_main(main)  # a mistake on the command line (unknown key or option): one line, exit 2
