"""2-rank DDP and 2-rank FSDP runs of `train.py` on the CPU (gloo), each stage with its own strategy: the global
batch is kept by accumulation over the real world size, FSDP keeps fp32 masters (bf16 compute in stage 2) and
agrees with DDP — rank 1 holding the model on the meta device until rank 0's weights reach its shards — and the
sharded model is handed to the next stage and saved whole."""

import re
import shutil
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.long]  # 2-rank train.py runs (≈ 70 s): make test-long (CI)
# 2 ranks × micro 4 × accumulation 2 = the stage-2 global batch of 16; stage 1: 2 × 8 × 1 = 16.
ARGS = ["trainer.enable_progress_bar=false", "eval.after_training=false",
        "data.twin.n_pretrain=32", "data.twin.n_finetune=64",
        "stages.pretrain.epochs=1", "stages.finetune.epochs=1", "trainer.accelerator=cpu", "trainer.devices=2",
        "stages.pretrain.micro_batch_size=8", "stages.finetune.micro_batch_size=4",
        "stages.finetune.global_batch_size=16", "checkpointing.every_n_steps=1", "checkpointing.keep_last=4"]


def train(run_dir, strategy, *extra):
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", f"logger.tracking_uri=sqlite:///{run_dir}/mlflow.db", *ARGS,
           f"strategy@stages.pretrain.strategy={strategy}", f"strategy@stages.finetune.strategy={strategy}", *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-5000:]
    return res


def weights(run_dir, stage):
    return torch.load(run_dir / stage / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    ddp = train(root / "ddp", "ddp")
    # FSDP: stage 1 in fp32 (comparable bit for bit with DDP), stage 2 as configured (bf16 compute, fp32 masters)
    fsdp = train(root / "fsdp", "fsdp", "stages.pretrain.strategy.param_dtype=null")
    return root, ddp, fsdp


def test_two_rank_ddp_and_fsdp_runs_keep_the_global_batch(runs):
    root, ddp, fsdp = runs
    for name, res in (("ddp", ddp), ("fsdp", fsdp)):
        log = res.stdout + res.stderr
        assert f"strategy {name}, precision 32-true, 2 process(es) × micro batch 4 × accumulation 2 = global " \
               f"batch 16" in log
        assert "planned 32 = trained 32" in log  # each rank: half of the 64 samples
        assert "rank 0 of 2, store on 127.0.0.1" in log  # one node: the store listens on loopback only
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / name}/mlflow.db")
        exp = client.get_experiment_by_name("lmm")
        stages = {r.data.tags["stage"]: r for r in client.search_runs([exp.experiment_id])}
        assert set(stages) == {"pretrain", "finetune"}  # rank 0 alone logs
        m = stages["finetune"].data.metrics
        assert (m["train/world_size"], m["train/accumulation"], m["train/global_batch"]) == (2, 2, 16)
        assert m["data/samples_seen"] == 32  # rank 0's share
        assert (root / name / "finetune" / "model" / "model.safetensors").exists()


def test_other_ranks_hold_only_what_their_stage_needs(runs):
    """FSDP: rank 1 builds the model on the meta device and receives rank 0's weights once sharded (stage 1 still
    equals DDP bit for bit, below), and rebuilds nothing after the last stage; DDP: every rank holds it whole. Each
    rank logs its peak host memory after each stage."""
    _, ddp, fsdp = runs
    ddp_log, fsdp_log = ddp.stdout + ddp.stderr, fsdp.stdout + fsdp.stderr
    assert fsdp_log.count("rank 1: model built on the meta device") == 2  # for stage 1, and again for stage 2
    assert "rank 1: no later stage — the trained model is not rebuilt here" in fsdp_log
    assert "meta device" not in ddp_log and "not rebuilt here" not in ddp_log
    for log in (ddp_log, fsdp_log):
        for rank in (0, 1):
            assert re.search(rf"rank {rank}: peak host memory [0-9.]+ GiB after stage finetune", log)


def test_fsdp_keeps_fp32_masters_and_agrees_with_ddp(runs):
    root, _, _ = runs
    assert max_diff(weights(root / "ddp", "pretrain"), weights(root / "fsdp", "pretrain")) <= 1e-6
    ddp2, fsdp2 = weights(root / "ddp", "finetune"), weights(root / "fsdp", "finetune")
    assert all(v.dtype == torch.float32 for v in fsdp2.values())  # the gathered masters
    assert any(k.startswith("model.llm.") for k in fsdp2)
    assert 0 < max_diff(ddp2, fsdp2) < 0.05  # bf16 compute in FSDP's stage 2, fp32 in DDP


def test_sharded_model_is_saved_whole(runs):
    from lmm.models.checkpoint import load_model_dir

    root, _, _ = runs
    model, _, _ = load_model_dir(root / "fsdp" / "finetune" / "model")
    trained = weights(root / "fsdp", "finetune")
    state = model.state_dict()
    assert max((state[k[len("model."):]] - v).abs().max().item() for k, v in trained.items()) == 0


def test_fsdp_stage_resumes_from_a_checkpoint_exactly(runs, tmp_path):
    """`resume=<file>`: stage 2 of the FSDP run, interrupted after its step-2 checkpoint (a copy of the run folder
    without stage 2's end), continued from that file in its own folder and MLflow run, ends with the uninterrupted
    run's weights — the data position is restored although the sharded strategy restores only after the optimizers
    are set up."""
    root, _, _ = runs
    run = shutil.copytree(root / "fsdp", tmp_path / "fsdp")
    for f in ("stage_done.json", "last.ckpt", "model"):
        shutil.rmtree(run / "finetune" / f) if f == "model" else (run / "finetune" / f).unlink()
    ckpt = run / "finetune" / "checkpoints" / "step-000002.ckpt"
    res = train(run, "fsdp", f"resume={ckpt}")
    assert "stage pretrain finished in an earlier run" in res.stdout + res.stderr
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run}/mlflow.db")
    exp = client.get_experiment_by_name("lmm")
    finetune = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags["stage"] == "finetune"]
    assert len(finetune) == 1 and finetune[0].data.tags["resumed_from"] == str(ckpt)  # continued, not restarted
    assert max_diff(weights(root / "fsdp", "finetune"), weights(run, "finetune")) == 0

