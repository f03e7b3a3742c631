"""An interrupted ``lmm.tracking.merge`` (issue 21 item 12): a run copied only in part is never counted as merged;
the next merge deletes the half copy and copies the run again, leaving exactly one complete copy."""

import os

import pytest
from mlflow import MlflowClient

from lmm.tracking.merge import MERGED_FROM, MERGING, MergeError, merge


def _source(tmp_path):
    """An old per-run store: a training run (params, a metric history, two artifacts) and its eval child run."""
    uri = f"sqlite:///{tmp_path}/old/mlflow.db"
    (tmp_path / "old").mkdir()
    c = MlflowClient(uri)
    exp = c.create_experiment("lmm", artifact_location=str(tmp_path / "old" / "artifacts"))
    parent = c.create_run(exp, run_name="row0-finetune", tags={"stage": "finetune"}).info.run_id
    c.log_param(parent, "seed", "0")
    for step in range(3):
        c.log_metric(parent, "train/loss", 1.0 / (step + 1), step=step)
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"artifact {name}")
        c.log_artifact(parent, str(tmp_path / name))
    child = c.create_run(exp, run_name="row0-eval", tags={"kind": "eval", "mlflow.parentRunId": parent})
    c.log_metric(child.info.run_id, "eval/gqa/score", 50.0)
    for run in (parent, child.info.run_id):
        c.set_terminated(run)
    return uri, c, parent


def test_an_interrupted_merge_is_finished_by_the_next_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the target store's default artifact folder (./mlruns) stays in the test folder
    uri, src, parent = _source(tmp_path)
    art = src.get_run(parent).info.artifact_uri.removeprefix("file://")
    # A real failure mid-copy: one of the run's artifacts is a link to nothing (a disk not mounted), found only
    # after the params and metrics were copied.
    os.remove(os.path.join(art, "b.txt"))
    os.symlink(tmp_path / "unmounted" / "b.txt", os.path.join(art, "b.txt"))
    into = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(MergeError, match=rf"run {parent} \(row0-finetune\) of {uri}.*{MERGING}"):
        merge([uri], into, echo=lambda s: None)
    dst = MlflowClient(into)
    exp_id = dst.get_experiment_by_name("lmm").experiment_id
    [half] = dst.search_runs([exp_id])
    assert half.data.tags[MERGING] == f"{uri}#{parent}" and MERGED_FROM not in half.data.tags  # never "merged"

    os.remove(os.path.join(art, "b.txt"))  # the disk is back
    (tmp_path / "b.txt").rename(os.path.join(art, "b.txt"))
    assert merge([uri], into, echo=lambda s: None) == {"copied": 2, "already": 0, "redone": 1, "stores": 1}
    assert merge([uri], into, echo=lambda s: None) == {"copied": 0, "already": 2, "redone": 0, "stores": 1}
    runs = {r.info.run_name: r for r in dst.search_runs([exp_id])}
    assert sorted(runs) == ["row0-eval", "row0-finetune"]
    copy = runs["row0-finetune"]
    assert copy.info.run_id != half.info.run_id and dst.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    assert copy.data.tags[MERGED_FROM] == f"{uri}#{parent}" and MERGING not in copy.data.tags
    assert copy.info.status == "FINISHED" and copy.data.params == {"seed": "0"}
    assert [m.value for m in dst.get_metric_history(copy.info.run_id, "train/loss")] == [1.0, 0.5, 1 / 3]
    assert sorted(a.path for a in dst.list_artifacts(copy.info.run_id)) == ["a.txt", "b.txt"]
    assert runs["row0-eval"].data.tags["mlflow.parentRunId"] == copy.info.run_id
