"""Evaluate a trained checkpoint on benchmarks: `python eval.py checkpoint=outputs/<run> benchmarks=[pope,gqa]`."""

import json
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lmm.pipeline import evaluate, one_line_errors, run_main  # noqa: E402  (light: model code is imported later)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@one_line_errors  # a config or input error: one line on stderr, exit 2
def main(cfg: DictConfig) -> None:
    out = evaluate(cfg)
    for name, scores in out["results"].items():
        print(f"[{name}] " + json.dumps(scores, default=str)[:600])
    print(f"answers and scores: {out['output_dir']}; MLflow run {out['run_id']} in {out['tracking_uri']}")


if __name__ == "__main__":
    run_main(main)  # a mistake on the command line (unknown key or option): one line, exit 2
