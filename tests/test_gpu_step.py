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
