"""Runs survive faults: pre-emption (SIGTERM) writes a checkpoint and exits; a SIGKILLed run resumes with
`resume=auto` — past a truncated newest checkpoint — and ends with the same weights, the same data and one loss
history in the same MLflow run as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

pytestmark = pytest.mark.slow
# Random twins (no pretraining), 96 stage-2 samples × 2 epochs = 24 optimizer steps, a checkpoint every 3 steps.
ARGS = ["trainer.enable_progress_bar=false", "eval.after_training=false",
        "data.twin.n_pretrain=32", "data.twin.n_finetune=96",
        "stages.pretrain.epochs=1", "stages.finetune.epochs=2", "checkpointing.every_n_steps=3",
        "checkpointing.keep_last=2"]
STEPS = 24


def cmd(run_dir, *extra):
    return [sys.executable, "train.py", f"hydra.run.dir={run_dir}", f"logger.tracking_uri=sqlite:///{run_dir}/mlflow.db",
            *ARGS, *extra]


def run(run_dir, *extra):
    res = subprocess.run(cmd(run_dir, *extra), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def start_and_signal(run_dir, sig, min_step, *extra):
    """Start a run, send ``sig`` once stage 2 has written a checkpoint at step ≥ ``min_step``; return (proc, log)."""
    log = open(Path(run_dir).parent / f"{Path(run_dir).name}-{sig}.log", "w")
    proc = subprocess.Popen(cmd(run_dir, *extra), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    ckpts = Path(run_dir) / "finetune" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.stem.split("-")[1]) for p in ckpts.glob("step-*.ckpt")] if ckpts.exists() else []
        if steps and max(steps) >= min_step and len(steps) <= 2:  # the oldest pruned (keep_last) after a save
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    proc.wait(timeout=300)
    log.close()
    return proc, Path(log.name).read_text()


def trained_weights(run_dir):
    return torch.load(Path(run_dir) / "finetune" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def loss_history(run_dir):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    exp = client.get_experiment_by_name("lmm")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "finetune"]
    assert len(runs) == 1, "a resumed stage continues its MLflow run"
    return runs[0], client.get_metric_history(runs[0].info.run_id, "train/loss")


@pytest.mark.long  # three train.py processes, signals included (≈ 70 s): make test-long (CI)
def test_preempted_and_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    ref_dir, dir_ = tmp_path / "reference", tmp_path / "interrupted"
    run(ref_dir)
    reference = trained_weights(ref_dir)

    # 1. Pre-emption: SIGTERM → the current optimizer step finishes, a checkpoint is written, exit 143.
    proc, out = start_and_signal(dir_, signal.SIGTERM, 3)
    assert proc.returncode == 143, out[-3000:]
    assert "pre-empted" in out and (dir_ / "pretrain" / "stage_done.json").exists()
    assert not (dir_ / "finetune" / "stage_done.json").exists()
    pre_done = (dir_ / "pretrain" / "stage_done.json").stat().st_mtime_ns

    # 2. Resumed, then SIGKILLed mid-stage (no chance to write anything).
    proc, out = start_and_signal(dir_, signal.SIGKILL, 12, "resume=auto")
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert "stage pretrain finished in an earlier run" in out
    ckpts = sorted((dir_ / "finetune" / "checkpoints").glob("step-*.ckpt"))
    assert len(ckpts) == 2  # keep_last
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn newest checkpoint

    # 3. `python -m lmm.training.resume <run>` (the run's own overrides, resume=auto): a clear message about the torn
    #    file, back to the previous checkpoint, to the end.
    res = subprocess.run([sys.executable, "-m", "lmm.training.resume", str(dir_)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert f"{newest}: unreadable checkpoint" in log and "falling back to the previous checkpoint" in log
    assert f"resuming stage finetune from {ckpts[0]}" in log
    assert (dir_ / "pretrain" / "stage_done.json").stat().st_mtime_ns == pre_done  # a finished stage is kept

    # Same weights as the uninterrupted run (fp32, CPU), same data, one continuous loss history.
    resumed = trained_weights(dir_)
    assert resumed.keys() == reference.keys()
    diff = max((resumed[k] - reference[k]).abs().max().item() for k in reference)
    assert diff <= 1e-6, diff
    run_ref, hist_ref = loss_history(ref_dir)
    run_res, hist_res = loss_history(dir_)
    ref_by_step = {m.step: m.value for m in hist_ref}
    assert set(ref_by_step) == {m.step for m in hist_res} and len(ref_by_step) >= STEPS - 1
    for m in hist_res:  # steps logged twice (after the last checkpoint, before the kill) repeat the same value
        assert abs(m.value - ref_by_step[m.step]) <= 1e-5, (m.step, m.value, ref_by_step[m.step])
    for key in ("data/samples_seen", "data/trained", "data/planned"):
        assert run_res.data.metrics[key] == run_ref.data.metrics[key], key
    assert run_res.info.status == "FINISHED" and run_res.data.tags.get("resumed_from")
    assert run_res.data.metrics["data/samples_seen"] == 96 * 2


def test_checkpoints_are_written_atomically(tmp_path):
    from lmm.training.checkpointing import ResumeError, atomic_torch_save, validate_checkpoint

    path = tmp_path / "step-000001.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(2)}, "loops": {}}, path)
    good = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")  # the write fails halfway

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"state_dict": {"w": torch.zeros(2)}, "boom": Unpicklable()}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == [path.name]  # old file intact, no temp left
    validate_checkpoint(path)
    path.write_bytes(good[:-10])
    with pytest.raises(ResumeError, match="unreadable checkpoint"):
        validate_checkpoint(path)
