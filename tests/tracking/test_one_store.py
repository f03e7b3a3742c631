"""One MLflow store for the project: four training processes logging at once to `make tracking-server` (Table 2 rows
3 and 7 among them) lose no run, metric or artifact; the store, served by `make ui`, shows the rows by experiment
name with headline ``eval/<bench>`` metrics through its REST API; old per-run stores merge in once."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import requests
from conftest import REPO

pytestmark = pytest.mark.slow
FAST = ["data.twin.n_pretrain=32", "data.twin.n_finetune=64", "stages.pretrain.max_steps=3",
        "stages.finetune.max_steps=3", "trainer.enable_progress_bar=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def make_server(target: str, *args: str):
    """``make <target> ...`` in its own process group; yields the base URL once /health answers."""
    port = free_port()
    proc = subprocess.Popen(["make", target, f"PORT={port}", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the MLflow server did not start within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def train(run_dir, uri, *overrides):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen([sys.executable, "train.py", f"hydra.run.dir={run_dir}", *FAST, *overrides], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc):
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]


def search(url: str) -> list[dict]:
    api = f"{url}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "lmm"}, timeout=30).json()
    got = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp["experiment"]["experiment_id"]],
                                                    "max_results": 1000}, timeout=30).json()
    return got.get("runs", [])


@pytest.mark.long  # four trainings at once (≈ 90 s on 2 cores): make test-long (CI)
def test_rows_and_concurrent_jobs_in_one_store_read_back_through_the_api(tmp_path):
    """Four training processes log to `make tracking-server` at the same time — Table 2 rows 3 and 7 (trained and
    evaluated) and two more stage-1 jobs — and lose no run, metric step or artifact; then `make ui` serves the same
    store and its REST API shows the rows by experiment name, with the eval/<bench> columns of the Compare view."""
    from mlflow import MlflowClient

    db = f"sqlite:///{tmp_path}/mlflow.db"
    rows = {"row3_mlp_connector": "3", "row7_gqa": "7"}
    with make_server("tracking-server", f"DB={db}", f"ARTIFACTS={tmp_path}/artifacts") as url:
        jobs = [train(tmp_path / row, url, f"+experiment={row}", "eval.benchmarks=[gqa,pope]") for row in rows]
        jobs += [train(tmp_path / f"job{k}", url, f"seed={k}", "run_stages=[pretrain]", "eval.after_training=false",
                       f"+logger.tags.experiment=job{k}") for k in range(2)]
        for job in jobs:
            finished(job)
        client = MlflowClient(tracking_uri=url)
        runs = client.search_runs([client.get_experiment_by_name("lmm").experiment_id])
        stages = [r for r in runs if r.data.tags.get("stage")]
        assert len(stages) == 2 * 2 + 2 and all(r.info.status == "FINISHED" for r in runs)
        for run in stages:
            assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3  # every optimizer step
            assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(list((tmp_path / "artifacts").rglob("config.yaml"))) == 6  # stored under the server's root

    with make_server("ui", f"STORE={db}") as url:
        by_name = {r["info"]["run_name"]: r for r in search(url)}
    assert set(by_name) == {f"{row}-{part}" for row in rows for part in ("pretrain", "finetune", "eval")} | {
        "job0-pretrain", "job1-pretrain"}
    for row, paper_row in rows.items():
        for part in ("pretrain", "finetune", "eval"):
            tags = {t["key"]: t["value"] for t in by_name[f"{row}-{part}"]["data"]["tags"]}
            assert (tags["experiment"], tags["paper_row"], tags["scale"]) == (row, paper_row, "tiny")
        compared = {m["key"] for m in by_name[f"{row}-finetune"]["data"]["metrics"]}
        assert {"eval/gqa", "eval/pope"} <= compared  # the run a user selects shows Table 2's columns


def test_old_per_run_stores_merge_once(tmp_path):
    from mlflow import MlflowClient

    from lmm.tracking.merge import merge
    from lmm.tracking.runs import collect_runs

    old = []
    for k in range(2):
        uri = f"sqlite:///{tmp_path}/old{k}/mlflow.db"
        (tmp_path / f"old{k}").mkdir()
        c = MlflowClient(uri)
        exp = c.create_experiment("lmm")
        parent = c.create_run(exp, run_name=f"row{k}-finetune", tags={"experiment": f"row{k}", "stage": "finetune"})
        for step in range(3):
            c.log_metric(parent.info.run_id, "train/loss", 1.0 / (step + 1), step=step)
        child = c.create_run(exp, run_name=f"row{k}-eval", tags={"kind": "eval", "experiment": f"row{k}",
                                                                 "mlflow.parentRunId": parent.info.run_id})
        c.log_metric(child.info.run_id, "eval/gqa/score", 50.0 + k)
        (tmp_path / "a.txt").write_text(f"store {k}")
        c.log_artifact(child.info.run_id, str(tmp_path / "a.txt"))
        for run in (parent, child):
            c.set_terminated(run.info.run_id)
        old.append(uri)
    into = f"sqlite:///{tmp_path}/mlflow.db"
    assert merge(old, into, echo=lambda s: None)["copied"] == 4
    assert merge(old, into, echo=lambda s: None) == {"copied": 0, "already": 4, "redone": 0, "stores": 2}
    c = MlflowClient(into)
    runs = {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("lmm").experiment_id])}
    assert set(runs) == {"row0-finetune", "row0-eval", "row1-finetune", "row1-eval"}
    assert runs["row1-eval"].data.tags["mlflow.parentRunId"] == runs["row1-finetune"].info.run_id
    assert [m.value for m in c.get_metric_history(runs["row0-finetune"].info.run_id, "train/loss")] == [1.0, 0.5, 1 / 3]
    assert c.download_artifacts(runs["row1-eval"].info.run_id, "a.txt", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "a.txt").read_text() == "store 1"
    both = collect_runs([into, *old])  # the copies and their originals count once
    assert len(both.runs) == 4 and set(both.runs["tracking_uri"]) == {into}
