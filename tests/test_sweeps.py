"""Hydra multirun sweeps at tiny scale: one MLflow run per swept value, tagged, in the project's one store; parallel
jobs through submitit; cluster launchers; Table 2 with stage 1 trained once per distinct setting."""

import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.slow
FAST = ["data.twin.n_pretrain=16", "data.twin.n_finetune=80", "stages.pretrain.max_steps=2",
        "stages.finetune.epochs=1", "eval.benchmarks=[gqa]", "trainer.enable_progress_bar=false"]


def test_data_efficiency_sweep_runs_parallel_jobs_into_one_store(tmp_path):
    """`make sweep-data LAUNCHER=local_parallel` at tiny scale: the two jobs run at once (submitit, one process each)
    and log into one store, each run tagged with its swept value."""
    import mlflow

    args = " ".join([f"hydra.sweep.dir={tmp_path}", "data.finetune.subsample=0.25,1.0",
                     f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *FAST])
    res = subprocess.run(["make", "sweep-data", "LAUNCHER=local_parallel", f"ARGS={args}"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    starts = sorted((tmp_path / str(k) / ".hydra").stat().st_mtime for k in range(2))
    ends = sorted((tmp_path / str(k) / "finetune" / "stage_done.json").stat().st_mtime for k in range(2))
    assert starts[1] < ends[0], "the two jobs did not overlap in time"
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


TABLE2 = ["row0_llava", "row1_vqav2", "row2_format_prompt", "row3_mlp_connector", "row4_okvqa_ocr",
          "row5_region_vqa", "row6_res336", "row7_gqa", "row8_sharegpt", "row9_13b"]


def test_cluster_launchers_compose():
    res = subprocess.run([sys.executable, "train.py", "hydra/launcher=slurm_13b", "+experiment=llava_v1_5_13b",
                          "--cfg", "hydra", "--package", "hydra.launcher"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    got = yaml.safe_load(res.stdout)
    assert got["_target_"].endswith("SlurmLauncher") and got["timeout_min"] == 2160
    assert (got["nodes"], got["gpus_per_node"], got["tasks_per_node"]) == (1, 8, 8)


@pytest.mark.long  # ten rows trained and evaluated: make test-long (CI)
def test_table2_trains_four_stage1s_for_ten_rows(tmp_path):
    import mlflow

    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "LMM_STAGE_REUSE": "true"}
    cmd = ["make", "table2", f"ARGS=hydra.sweep.dir={tmp_path}/multirun stage_reuse.index={tmp_path}/stage_index "
           f"data.twin.n_pretrain=16 data.twin.n_finetune=80 stages.pretrain.max_steps=2 stages.finetune.max_steps=2 "
           f"eval.benchmarks=[gqa] trainer.enable_progress_bar=false", f"REPORT={tmp_path}/report"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("lmm").experiment_id], max_results=1000)
    trained_stage1 = [r for r in runs if r.data.tags.get("stage") == "pretrain"]
    finetune = {r.data.tags["experiment"]: r for r in runs if r.data.tags.get("stage") == "finetune"}
    evals = {r.data.tags["experiment"] for r in runs if r.data.tags.get("kind") == "eval"}
    assert len(trained_stage1) == 4  # rows 0–2, 3–5, 6–8 share their stage 1; row 9 has its own
    assert set(finetune) == set(TABLE2) == evals
    groups = {}
    for row, run in finetune.items():
        groups.setdefault(run.data.tags.get("reused.pretrain.run_id", "own"), []).append(row)
    stage1_of = {r.info.run_id: r.data.tags["experiment"] for r in trained_stage1}
    shared = sorted(sorted([stage1_of[k], *v]) for k, v in groups.items() if k != "own")
    assert shared == [["row0_llava", "row1_vqav2", "row2_format_prompt"],
                      ["row3_mlp_connector", "row4_okvqa_ocr", "row5_region_vqa"],
                      ["row6_res336", "row7_gqa", "row8_sharegpt"]]
    report = (tmp_path / "report" / "report.md").read_text()
    assert all(row in report for row in TABLE2)
