"""Tiny in-process runs (stage 2 alone, 48 samples, 1 epoch): a stage that trains on nothing fails and keeps nothing;
a checkpoint records its run; a resume with a changed config says what changed in the stage's MLflow run;
`overwrite=true` keeps no old checkpoint beside the new run's."""

import json

import mlflow
import pytest
import torch
from conftest import compose_train

from lmm.pipeline import train as run_pipeline

pytestmark = pytest.mark.slow
FAST = ["run_stages=[finetune]", "stages.finetune.allow_random_connector=true", "data.twin.n_pretrain=32",
        "data.twin.n_finetune=48", "stages.finetune.epochs=1", "eval.after_training=false",
        "trainer.enable_progress_bar=false", "checkpointing.every_n_steps=1", "checkpointing.keep_last=2"]


def config(run, *overrides):
    return compose_train(f"paths.output_dir={run}", f"logger.tracking_uri=sqlite:///{run.parent}/mlflow.db", *FAST,
                         *overrides)


def finetune_runs(run):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run.parent}/mlflow.db")
    exp = client.get_experiment_by_name("lmm")
    runs = client.search_runs([exp.experiment_id], f"tags.run_group = '{run}'")
    return client, [r for r in runs if r.data.tags.get("stage") == "finetune"]


def test_a_stage_that_trains_on_nothing_fails_and_keeps_nothing(tmp_path):
    from lmm.data.shards import convert
    from lmm.synth.world import prepare_training
    from lmm.training.run import EmptyStageError

    run, index = tmp_path / "run", tmp_path / "index"
    reuse = ["stage_reuse.enabled=true", f"stage_reuse.index={index}"]
    cfg = prepare_training(config(run, *reuse))
    shards = tmp_path / "shards"
    convert(cfg.data.finetune.json, cfg.data.finetune.image_folder, shards, echo=lambda *a: None)
    tars = sorted(shards.glob("*.tar"))
    for tar in tars:  # every shard truncated: each sample is an unreadable_shard skip
        tar.write_bytes(b"")
    with pytest.raises(EmptyStageError) as err:
        run_pipeline(config(run, *reuse, f"data.finetune.shards={shards}"))
    msg = str(err.value)
    assert "stage finetune trained on 0 samples: planned 48 = trained 0 + skipped 48 {'unreadable_shard': 48}" in msg
    assert str(shards) in msg and "FAILED" in msg
    stage = run / "finetune"
    assert not any((stage / f).exists() for f in ("stage_done.json", "last.ckpt", "model", "connector.safetensors"))
    assert not index.exists() or not list(index.iterdir())  # never a stage-reuse entry
    _, runs = finetune_runs(run)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.metrics["data/trained"] == 0 and runs[0].data.metrics["data/skipped_unreadable_shard"] == 48


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("lifecycle") / "run"
    result = run_pipeline(config(run))
    assert result["stages"]["finetune"]["steps"] > 4
    return run, result["stages"]["finetune"]["steps"]


def test_a_checkpoint_records_its_run_and_stage(finished):
    finished, steps = finished
    step = torch.load(finished / "finetune" / "checkpoints" / f"step-{steps:06d}.ckpt", map_location="cpu",
                      weights_only=True)
    assert step["lmm"]["run_dir"] == str(finished.resolve()) and step["lmm"]["stage"] == "finetune"


def test_a_resume_with_a_changed_config_says_what_changed(finished):
    finished, _ = finished
    stage = finished / "finetune"
    for f in ("stage_done.json", "last.ckpt"):  # interrupted after its last step checkpoint
        (stage / f).unlink()
    run_pipeline(config(finished, "resume=auto", "stages.finetune.lr=5e-4"))
    client, runs = finetune_runs(finished)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same run, continued
    assert runs[0].data.tags["resume.config_changes"] == "stages.finetune.lr: 0.001 → 0.0005"
    assert "resume_config_changes.txt" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_overwrite_keeps_no_old_checkpoint_beside_the_new_runs(finished):
    finished, steps = finished
    assert json.loads((finished / "finetune" / "stage_done.json").read_text())["steps"] == steps
    result = run_pipeline(config(finished, "overwrite=true", "stages.finetune.max_steps=2"))
    assert result["stages"]["finetune"]["steps"] == 2
    # the earlier run's last checkpoints (higher steps) are gone, and the new run's were not pruned against them
    assert sorted(p.name for p in (finished / "finetune" / "checkpoints").iterdir()) == \
        ["step-000001.ckpt", "step-000002.ckpt"]


def test_a_stage_runs_without_step_checkpoints(tmp_path):
    """`callbacks.step_checkpoints=null` (README: `callbacks.<name>=null` removes one) trains and saves last.ckpt;
    it used to end in a bare StopIteration."""
    run = tmp_path / "run"
    result = run_pipeline(config(run, "callbacks.step_checkpoints=null"))
    st = result["stages"]["finetune"]
    assert st["steps"] > 0 and (run / "finetune" / "last.ckpt").exists()
    assert not (run / "finetune" / "checkpoints").exists()
