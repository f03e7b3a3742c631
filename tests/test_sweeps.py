"""Hydra multirun sweeps at tiny scale: one MLflow run per swept value, tagged, in one store per sweep."""

import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow
FAST = ["data.twin.n_pretrain=16", "data.twin.n_finetune=80", "stages.pretrain.max_steps=2",
        "stages.finetune.epochs=1", "eval.benchmarks=[gqa]", "trainer.enable_progress_bar=false"]


def test_data_efficiency_sweep_runs_one_tagged_run_per_ratio(tmp_path):
    import mlflow

    cmd = [sys.executable, "train.py", "-m", "+sweep=data_efficiency", "+experiment=llava_v1_5_7b",
           f"hydra.sweep.dir={tmp_path}", "data.finetune.subsample=0.25,1.0", *FAST]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lmm").experiment_id])
    finetune = {r.data.tags["sweep.value"]: r for r in runs if r.data.tags.get("stage") == "finetune"}
    evals = [r for r in runs if r.data.tags.get("kind") == "eval"]
    assert set(finetune) == {"0.25", "1.0"} and len(evals) == 2
    assert all(r.data.tags["sweep"] == "data_efficiency" and r.data.tags["experiment"] == "llava_v1_5_7b"
               for r in [*finetune.values(), *evals])
    seen = {v: r.data.metrics["data/samples_seen"] for v, r in finetune.items()}
    assert seen["0.25"] == round(0.25 * seen["1.0"]) or abs(seen["0.25"] - 0.25 * seen["1.0"]) <= 1
    assert {r.data.tags["mlflow.parentRunId"] for r in evals} == {r.info.run_id for r in finetune.values()}
