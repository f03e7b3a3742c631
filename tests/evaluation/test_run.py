"""`python eval.py` on the checkpoint of `python train.py`: answer files, official scores, MLflow child run."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_eval_writes_answers_scores_and_mlflow(tmp_path):
    import mlflow

    train = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}/train", "trainer.enable_progress_bar=false",
             "data.twin.n_pretrain=32", "data.twin.n_finetune=64", "stages.pretrain.epochs=1", "stages.finetune.epochs=1",
             "eval.after_training=false"]
    res = subprocess.run(train, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ev = [sys.executable, "eval.py", f"checkpoint={tmp_path}/train", f"hydra.run.dir={tmp_path}/eval",
          f"eval.data_root={tmp_path}/bench", "eval.benchmarks=[pope,gqa,mmvet]"]
    res = subprocess.run(ev, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "bench" / "pope" / "coco" / "coco_pope_random.json").exists()
    for bench in ("pope", "gqa"):
        answers = [json.loads(x) for x in (tmp_path / "eval" / bench / "answers.jsonl").read_text().splitlines()]
        assert answers and {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} <= set(answers[0])
        scores = json.loads((tmp_path / "eval" / bench / "scores.json").read_text())
        assert scores["n_missing"] == 0 and scores["n_predictions"] == len(answers)
        # The CLI scores the same files the same way.
        cli = subprocess.run([sys.executable, "-m", "lmm.evaluation", "score", bench, "--predictions",
                              str(tmp_path / "eval" / bench / "answers.jsonl"), "--data-root", str(tmp_path / "bench")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["score"] == scores["score"]
    assert "mmvet: skipped" in res.stderr + res.stdout  # judge-scored, no judge configured: never faked

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/train/mlflow.db")
    exp = client.get_experiment_by_name("lmm")
    runs = client.search_runs([exp.experiment_id])
    evals = [r for r in runs if r.data.tags.get("kind") == "eval"]
    train_runs = {r.info.run_id: r for r in runs if r.data.tags.get("stage") == "finetune"}
    assert len(evals) == 1 and evals[0].data.tags["mlflow.parentRunId"] in train_runs
    assert "eval/gqa/score" in evals[0].data.metrics and "eval/pope/adversarial.accuracy" in evals[0].data.metrics
    arts = {a.path for a in client.list_artifacts(evals[0].info.run_id, "eval/gqa")}
    assert "eval/gqa/answers.jsonl" in arts
