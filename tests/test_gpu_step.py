"""benchmarks/gpu_step.py at toy size on the CPU (the GPU path runs the same code at real size): it trains, reports
a positive throughput, and its fp32-master check passes."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow  # a subprocess running the benchmark script
def test_toy_gpu_step_runs_on_cpu():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_step.py"), "--device", "cpu", "--toy"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    tokens = re.search(r"^tokens/s: ([0-9.]+)$", out, re.M)
    assert tokens and float(tokens.group(1)) > 0, out
    assert re.search(r"^TFLOP/s: [0-9.]+ \(model FLOPs per step [0-9.e+]+", out, re.M), out
    assert re.search(r"^batch: 2 × 128 tokens \(49 image tokens\)", out, re.M), out
    assert re.search(r"^fp32 masters: ok .* moved (9\d|100)\.\d% of .*q_proj", out, re.M), out
    assert "plan estimate" in out and out.startswith("device: cpu (toy)")


@pytest.mark.slow  # the model built twice, DeepSpeed's engine started (≈ 15 s)
def test_toy_deepspeed_checks_run_on_cpu(capsys, monkeypatch):
    """`gpu_step.py --deepspeed` at toy size on the CPU: the same accumulation and checkpoint checks a GPU session runs
    at real size (benchmarks/gpu_deepspeed.py)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_step

    saved = dict(os.environ)  # Lightning's DeepSpeed strategy sets MASTER_PORT, RANK, WORLD_SIZE, ...
    try:
        result = gpu_step.main(["--device", "cpu", "--toy", "--deepspeed"])
    finally:  # not left to later tests: their train.py ranks would inherit them
        os.environ.clear()
        os.environ.update(saved)
    out = capsys.readouterr().out
    assert result["device"] == "cpu" and len(result["deepspeed"]) == 2
    assert re.search(r"^deepspeed accumulation: ok — .*: 6 optimizer steps \(engine 6\); gradient norm ratio "
                     r"deepspeed/plain per step (0\.99|1\.00)\d+\.\.(0\.99|1\.00)\d+ ", out, re.M), out
    assert re.search(r"^deepspeed checkpoint: ok — every rank's shard recorded .*: 25 fp32 tensors", out, re.M), out
