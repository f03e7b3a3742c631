"""A new run into a folder that holds an earlier run is refused before anything is written (Hydra's .hydra/ files
included), unless `overwrite=true`, which removes the earlier run's stage folders first; the run keeps its own copy
of its overrides for `lmm.training.resume`."""

import subprocess
import sys

import pytest
import yaml
from conftest import REPO, compose_train

from lmm.training.checkpointing import atomic_torch_save


def earlier_run(run):
    """The files an interrupted two-stage run leaves (stage 1 done, stage 2 checkpointed at a high step)."""
    for rel, data in {".hydra/overrides.yaml": "- seed=7\n", ".hydra/config.yaml": "seed: 7\n",
                      ".hydra/hydra.yaml": "hydra: {}\n", "overrides.yaml": "- seed=7\n", "config.yaml": "seed: 7\n",
                      "train.log": "earlier log\n", "mlflow.db": "a store", "pretrain/stage_done.json": "{}",
                      "pretrain/connector.safetensors": "w", "finetune/mlflow_run_id.txt": "abc"}.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(data)
    for path in (run / "pretrain" / "last.ckpt", run / "finetune" / "checkpoints" / "step-000900.ckpt"):
        atomic_torch_save({"state_dict": {}, "loops": {}}, path)
    return snapshot(run)


def snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_rerun_is_refused_before_hydra_writes_anything(tmp_path):
    run = tmp_path / "run"
    before = earlier_run(run)
    res = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run}", "seed=8",
                          f"logger.tracking_uri=sqlite:///{run}/mlflow.db"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0, res.stdout[-2000:]
    err = res.stderr
    assert f"{run} holds an earlier run" in err and "resume=auto" in err and "overwrite=true" in err, err[-2000:]
    assert "Traceback" not in err
    assert snapshot(run) == before  # byte-identical: .hydra/overrides.yaml, checkpoints, log, store


def test_in_process_runs_are_refused_too(tmp_path):
    from lmm.training.run import run_training
    from lmm.training.run_folder import RunFolderError

    run = tmp_path / "run"
    before = earlier_run(run)
    with pytest.raises(RunFolderError, match=r"holds an earlier run \(config\.yaml, finetune/checkpoints, "
                                             r"pretrain/stage_done\.json, pretrain/last\.ckpt\)"):
        run_training(compose_train(f"paths.output_dir={run}"))
    assert snapshot(run) == before
    with pytest.raises(RunFolderError, match="choose one"):
        run_training(compose_train(f"paths.output_dir={run}", "resume=auto", "overwrite=true"))
    assert snapshot(run) == before


def test_overwrite_clears_the_earlier_runs_stages_and_keeps_the_rest(tmp_path):
    from lmm.training.run import start_run

    run = tmp_path / "run"
    earlier_run(run)
    (run / "eval").mkdir()
    (run / "eval" / "answers.jsonl").write_text("stale")
    start_run(compose_train(f"paths.output_dir={run}", "overwrite=true", "seed=8"))
    left = snapshot(run)
    # no old checkpoint is left to mix with (and be pruned against) the new run's
    assert not any(k.startswith(("pretrain/", "finetune/", "eval/")) for k in left), sorted(left)
    assert left["mlflow.db"] == b"a store" and left["train.log"] == b"earlier log\n"
    assert yaml.safe_load(left["config.yaml"])["seed"] == 8  # the new run's config


def test_a_fresh_folder_and_a_resume_are_let_through(tmp_path):
    from lmm.training.run import start_run

    start_run(compose_train(f"paths.output_dir={tmp_path / 'new'}"))
    assert (tmp_path / "new" / "config.yaml").is_file()
    run = tmp_path / "run"
    earlier_run(run)
    start_run(compose_train(f"paths.output_dir={run}", "resume=auto"))
    assert (run / "finetune" / "checkpoints" / "step-000900.ckpt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text()) == {"seed": 7}  # the recorded config is kept
