"""Which MLflow store an evaluation logs to (issue 21 item 14): ``eval.tracking_uri`` > the user's
``MLFLOW_TRACKING_URI`` > the store the model folder's training run logged to > the project's mlflow.db; the
evaluation is a child of the training run only when it lands in the training run's store."""

import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

from lmm.evaluation.run import EvalRun, open_run, tracking_uri_for
from lmm.text.templates import get_template


def test_the_users_setting_beats_the_model_folders(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    folder_store, users = "sqlite:////train/mlflow.db", "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)
    assert tracking_uri_for("sqlite:////explicit.db", folder_store) == "sqlite:////explicit.db"
    assert tracking_uri_for(None, folder_store) == users
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri_for(None, folder_store) == folder_store
    assert tracking_uri_for(None, None) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def _eval_run(tmp_path, tracking_uri=None):
    cfg = OmegaConf.create({"tracking_uri": tracking_uri, "experiment_name": "lmm", "tags": None, "benchmarks": ["gqa"],
                            "batch_size": 1, "limit": None, "data_root": str(tmp_path), "dtype": None})
    return EvalRun(cfg, torch.nn.Linear(1, 1), None, get_template("vicuna_v1"), None, "m", tmp_path)


def test_the_child_run_link_only_in_the_training_runs_store(monkeypatch, tmp_path):
    train_store, users = f"sqlite:///{tmp_path}/train.db", f"sqlite:///{tmp_path}/users.db"
    train = MlflowClient(train_store)
    train_run = train.create_run(train.create_experiment("lmm")).info.run_id
    spec = {"model_dir": str(tmp_path / "model"), "mlflow_tracking_uri": train_store, "mlflow_run_id": train_run}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)  # the user's store: a run there, not linked to the training
    ev = _eval_run(tmp_path)
    open_run(ev, spec)
    assert ev.tracking_uri == users and ev.parent is None
    run = MlflowClient(users).get_run(ev.run_id)
    assert "mlflow.parentRunId" not in run.data.tags and "train_run_id" not in run.data.tags

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # no setting of the user's: the training run's store, as its child
    ev = _eval_run(tmp_path)
    open_run(ev, spec)
    assert ev.tracking_uri == train_store and ev.parent == train_run
    assert train.get_run(ev.run_id).data.tags["mlflow.parentRunId"] == train_run
