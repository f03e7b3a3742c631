"""`resume=<ckpt>` continues only the run that wrote the checkpoint (its run folder and stage, recorded in the
checkpoint or read from its place), and a resume says which config keys changed since the run started."""

import shutil

import pytest
import yaml
from conftest import compose_train

from lmm.training.checkpointing import ResumeError, atomic_torch_save
from lmm.training.run import resume_point
from lmm.training.run_folder import config_changes


def checkpoint(path, **lmm):
    return atomic_torch_save({"state_dict": {}, "loops": {}, "lmm": lmm}, path)


def point(run, resume, stage="finetune"):
    cfg = compose_train(f"paths.output_dir={run}", f"resume={resume}")
    return resume_point(cfg, run / stage, first=True)


def test_a_checkpoint_of_another_run_is_refused_naming_it(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ckpt = checkpoint(tmp_path / "kept" / "x.ckpt", run_dir=str(a), stage="finetune", mlflow_run_id="run-a")
    with pytest.raises(ResumeError) as err:
        point(b, ckpt)
    msg = str(err.value)
    assert f"written by run {a}, not by this run ({b})" in msg
    assert f"python -m lmm.training.resume {a}" in msg and "init_connector" in msg
    assert point(a, ckpt)[0] == ckpt  # the run that wrote it continues from it


def test_an_older_checkpoint_is_placed_by_its_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ckpt = checkpoint(a / "finetune" / "checkpoints" / "step-000003.ckpt")  # no run_dir / stage recorded
    with pytest.raises(ResumeError, match=f"written by run {a}, not by this run"):
        point(b, ckpt)
    assert point(a, ckpt)[0] == ckpt
    with pytest.raises(ResumeError, match="a checkpoint of stage finetune, not of pretrain"):
        point(a, ckpt, stage="pretrain")
    loose = checkpoint(tmp_path / "loose.ckpt")
    with pytest.raises(ResumeError, match="written by an unknown run"):
        point(b, loose)


def test_a_moved_run_folder_still_resumes_from_its_own_checkpoints(tmp_path):
    a = tmp_path / "a"
    checkpoint(a / "finetune" / "checkpoints" / "step-000003.ckpt", run_dir=str(a), stage="finetune")
    moved = shutil.copytree(a, tmp_path / "moved")
    ckpt = moved / "finetune" / "checkpoints" / "step-000003.ckpt"
    assert point(moved, ckpt)[0] == ckpt


def test_a_resume_lists_the_keys_that_changed(tmp_path):
    recorded = tmp_path / "config.yaml"
    recorded.write_text(yaml.safe_dump({"seed": 42, "resume": None, "run_name": "train-1",
                                        "stages": {"finetune": {"lr": 1e-3, "epochs": 1}}, "old": 1}))
    new = {"seed": 42, "resume": "auto", "run_name": "train-2", "stages": {"finetune": {"lr": 5e-4, "epochs": 1}},
           "new": [1, 2]}
    assert config_changes(recorded, new) == ["new: <unset> → [1, 2]", "old: 1 → <unset>",
                                             "stages.finetune.lr: 0.001 → 0.0005"]
    assert config_changes(tmp_path / "missing.yaml", new) == []
