"""End to end: `python train.py` on the tiny twin (both stages, MLflow tracking), a timm tower with a connector file
handed between runs, the masked-sample guard, benchmarks during training (the last three in-process)."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO, compose_train

from lmm.pipeline import train as run_pipeline

pytestmark = pytest.mark.slow
FAST = ["data.twin.n_pretrain=32", "data.twin.n_finetune=64", "stages.pretrain.epochs=1", "stages.finetune.epochs=1",
        "eval.after_training=false"]


def train(tmp_path, *overrides, check=True):
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
           "trainer.enable_progress_bar=false", *overrides]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def runs(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("lmm")
    return client, {r.data.tags["stage"]: r for r in client.search_runs([exp.experiment_id]) if "stage" in r.data.tags}


def test_default_run_trains_both_stages_and_tracks(default_run):
    tmp_path, res = default_run
    assert "MLflow store: sqlite:///" in res.stdout and "checkpoint:" in res.stdout
    client, by_stage = runs(tmp_path)
    assert set(by_stage) == {"pretrain", "finetune"}
    for run in by_stage.values():
        assert run.data.params["stages.finetune.template"] == "vicuna_v1"
        assert run.data.params["model.connector.name"] == "mlp2x_gelu"
        assert run.data.tags["git_sha"]
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"train/tokens_per_s", "data/fully_masked", "train/lr_connector"} <= set(run.data.metrics)
    history = [m.value for m in client.get_metric_history(by_stage["finetune"].info.run_id, "train/loss")]
    assert len(history) > 50
    assert history[-1] < 0.7 * history[0], (history[0], history[-1])
    assert by_stage["finetune"].data.metrics["data/fully_masked"] == 0
    # Stage 1 checkpoints hold the connector only; stage 2 connector + LLM; the vision tower never.
    ck1 = torch.load(tmp_path / "pretrain" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck1["state_dict"] and all(k.startswith("model.connector.") for k in ck1["state_dict"])
    ck2 = torch.load(tmp_path / "finetune" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("model.llm.") for k in ck2["state_dict"])
    assert not any(k.startswith("model.vision.") for k in ck2["state_dict"])
    assert (tmp_path / "finetune" / "model" / "model.safetensors").exists()


def in_process(tmp_path, *overrides):
    """`train.py` in this process (the composed config through lmm.pipeline.train)."""
    return run_pipeline(compose_train(f"paths.output_dir={tmp_path}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                      "trainer.enable_progress_bar=false", *overrides))


LOOPBACK = ("127.0.0.1", "::1", "localhost", "'127.0.0.1'", "'::1'", "'localhost'")


def off_machine(log_file) -> list[str]:
    """Lines of a tests/netaudit log whose target is neither a local (AF_UNIX) socket nor a loopback address."""
    import ast
    import os

    if not os.path.exists(log_file):
        return []
    bad = []
    for line in open(log_file, encoding="utf-8").read().splitlines():
        _, event, arg = line.split("\t", 2)
        target = ast.literal_eval(arg)
        host = target[0] if isinstance(target, tuple) else target
        if isinstance(host, bytes):
            host = host.decode()
        unix = event == "socket.connect" and not isinstance(target, tuple)
        if not unix and host not in (None, *LOOPBACK):
            bad.append(line)
    return bad


def test_the_default_run_uses_no_network(default_run, tmp_path):
    """docs/security.md §3: the tiny run (twins, both stages, 12 benchmarks) looks up and connects to nothing off
    this machine. The audit hook is checked first on a process that does look a name up."""
    import os

    out, _ = default_run
    probe = tmp_path / "probe.log"
    env = {**os.environ, "LMM_NET_AUDIT": str(probe), "PYTHONPATH": str(REPO / "tests" / "netaudit")}
    subprocess.run([sys.executable, "-c", "import socket\ntry: socket.getaddrinfo('203.0.113.7', 443)\n"
                    "except OSError: pass"], env=env, check=True, timeout=60)
    assert off_machine(probe) and "203.0.113.7" in probe.read_text()  # the hook records what it must
    assert off_machine(out / "net_audit.log") == []


def test_timm_tower_and_connector_file_handoff(tmp_path):
    in_process(tmp_path / "a", "model/vision=timm_vit_l14_clip_336", "run_stages=[pretrain]", *FAST)
    conn = tmp_path / "a" / "pretrain" / "connector.safetensors"
    result = in_process(tmp_path / "b", "model/vision=timm_vit_l14_clip_336", "run_stages=[finetune]",
                        f"stages.finetune.init_connector={conn}", *FAST)
    assert result["stages"]["finetune"]["steps"] > 0 and (tmp_path / "b" / "finetune" / "model").is_dir()


def test_all_masked_guard_stops_the_run(tmp_path):
    from lmm.training.callbacks import MaskedSampleError

    with pytest.raises(MaskedSampleError, match="have every label masked"):
        in_process(tmp_path, "model.max_length=40", "run_stages=[finetune]",
                   "stages.finetune.allow_random_connector=true", "data.masked_min_samples=8", *FAST)


def test_benchmarks_scored_during_training(tmp_path):
    in_process(tmp_path, "data.twin.n_pretrain=32", "data.twin.n_finetune=64", "stages.pretrain.epochs=1",
               "stages.finetune.epochs=2", "eval.during_training.enabled=true", "eval.after_training=false")
    client, by_stage = runs(tmp_path)
    run_id = by_stage["finetune"].info.run_id
    for bench in ("gqa", "pope"):
        assert len(client.get_metric_history(run_id, f"val/{bench}/score")) == 2  # once per epoch
    assert not any(k.startswith("val/") for k in by_stage["pretrain"].data.metrics)


def test_token_budget_micro_batches_with_packing(tmp_path):
    """Micro-batches by a token budget, packed: every planned sample is trained on or counted as dropped."""
    result = in_process(tmp_path, "run_stages=[finetune]", "stages.finetune.allow_random_connector=true",
                        "stages.finetune.micro_batch_tokens=700", "stages.finetune.packing=true", *FAST)
    assert result["stages"]["finetune"]["steps"] > 0
    client, by_stage = runs(tmp_path)
    metrics = by_stage["finetune"].data.metrics
    assert metrics["train/global_batch_tokens"] == 700 * metrics["train/accumulation"]
    assert "train/global_batch" not in metrics
    assert metrics["data/samples_seen"] + metrics.get("data/dropped_by_plan_per_epoch", 0) == 64
    # the twin's shards carry no token counts: the plan estimated lengths (data.tokens_per_word), the run logs the
    # micro-batches' real spliced tokens
    assert client.get_metric_history(by_stage["finetune"].info.run_id, "train/batch_tokens")
