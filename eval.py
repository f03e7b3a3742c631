"""Evaluate a trained checkpoint on benchmarks: `python eval.py checkpoint=outputs/<run> benchmarks=[pope,gqa]`."""

import json
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from lmm.pipeline import evaluate

    out = evaluate(cfg)
    for name, scores in out["results"].items():
        print(f"[{name}] " + json.dumps(scores, default=str)[:600])
    print(f"answers and scores: {out['output_dir']}; MLflow run {out['run_id']} in {out['tracking_uri']}")


if __name__ == "__main__":
    main()
