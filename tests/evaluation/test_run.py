"""`python eval.py` on the checkpoint of `python train.py`: answer files, official scores, MLflow child run."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from lmm.evaluation.__main__ import main as cli_main

pytestmark = pytest.mark.slow


def test_eval_writes_answers_scores_and_mlflow(default_run, tmp_path, capsys):
    import mlflow

    trained, _ = default_run
    ev = [sys.executable, "eval.py", f"checkpoint={trained}", f"hydra.run.dir={tmp_path}/eval",
          f"eval.data_root={tmp_path}/bench", "eval.benchmarks=[pope,gqa,mmvet]"]
    # No MLFLOW_TRACKING_URI of the user's (it would win): the run goes to the training run's store, as its child.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run(ev, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "bench" / "pope" / "coco" / "coco_pope_random.json").exists()
    for bench in ("pope", "gqa"):
        answers = [json.loads(x) for x in (tmp_path / "eval" / bench / "answers.jsonl").read_text().splitlines()]
        assert answers and {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} <= set(answers[0])
        scores = json.loads((tmp_path / "eval" / bench / "scores.json").read_text())
        assert scores["n_missing"] == 0 and scores["n_predictions"] == len(answers)
        # The scoring CLI (`python -m lmm.evaluation score`, its entry point: test_cli) scores the same files alike.
        capsys.readouterr()
        assert cli_main(["score", bench, "--predictions", str(tmp_path / "eval" / bench / "answers.jsonl"),
                         "--data-root", str(tmp_path / "bench")]) == 0
        assert json.loads(capsys.readouterr().out)["score"] == scores["score"]
    # scale=tiny grades MM-Vet's twin by rules (judge.kind=rule), and says so; LLaVA-W would stay judge-only
    mmvet = json.loads((tmp_path / "eval" / "mmvet" / "scores.json").read_text())
    assert mmvet["judge"] == ["rule-v1"] and (tmp_path / "eval" / "mmvet" / "per_question.json").is_file()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{trained}/mlflow.db")
    exp = client.get_experiment_by_name("lmm")
    runs = client.search_runs([exp.experiment_id])
    evals = [r for r in runs if r.data.tags.get("kind") == "eval"
             and r.data.params.get("data_root") == str(tmp_path / "bench")]  # this eval.py run (not the run's own)
    train_runs = {r.info.run_id: r for r in runs if r.data.tags.get("stage") == "finetune"}
    assert len(evals) == 1 and evals[0].data.tags["mlflow.parentRunId"] in train_runs
    assert "eval/gqa/score" in evals[0].data.metrics and "eval/pope/adversarial.accuracy" in evals[0].data.metrics
    arts = {a.path for a in client.list_artifacts(evals[0].info.run_id, "eval/gqa")}
    assert "eval/gqa/answers.jsonl" in arts
