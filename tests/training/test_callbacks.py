"""Each callback on its own: the fully-masked-sample guard, and the step checkpoints' keep-last pruning."""

from types import SimpleNamespace

import pytest
import torch

from lmm.training.callbacks import MaskedSampleError, MaskedSampleGuard
from lmm.training.checkpointing import StepCheckpoints, atomic_torch_save, find_resume_checkpoint


def module(seen, masked):
    return SimpleNamespace(samples_seen=seen, fully_masked=masked, fully_masked_ids=[f"m{i}" for i in range(masked)])


def test_masked_guard_waits_for_enough_samples_then_stops_above_the_share():
    guard = MaskedSampleGuard(max_share=0.01, min_samples=100)
    guard.check(module(50, 10))          # too few samples yet to judge
    guard.check(module(1000, 10))        # exactly 1 %: allowed
    with pytest.raises(MaskedSampleError, match=r"11 of 1000 samples \(1.1%\).*\['m0', 'm1'"):
        guard.check(module(1000, 11))
    with pytest.raises(MaskedSampleError):
        guard.check(module(50, 10), final=True)  # at the end of training any count is judged
    guard.check(module(0, 0), final=True)


def test_step_checkpoints_keep_the_newest(tmp_path):
    cb = StepCheckpoints(tmp_path, every_n_steps=1, keep_last=2)
    for step in (3, 1, 12, 6):
        atomic_torch_save({"state_dict": {}, "loops": {}, "lmm": {"mlflow_run_id": str(step)}},
                          tmp_path / f"step-{step:06d}.ckpt")
    cb.prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000006.ckpt", "step-000012.ckpt"]
    path, info = find_resume_checkpoint(tmp_path.parent / "x") or (None, None)  # no checkpoints folder: None
    assert path is None
    (tmp_path / "checkpoints").mkdir()
    for p in tmp_path.glob("step-*.ckpt"):
        p.rename(tmp_path / "checkpoints" / p.name)
    path, info = find_resume_checkpoint(tmp_path)
    assert path.name == "step-000012.ckpt" and info["mlflow_run_id"] == "12"
    torch.save({"not": "a training checkpoint"}, path)
    path, info = find_resume_checkpoint(tmp_path)  # the newest is unusable: the previous one
    assert path.name == "step-000006.ckpt"
