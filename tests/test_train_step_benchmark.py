"""benchmarks/train_step_benchmark.py (`make bench-train`) at toy size: it runs both modes against transformers' Llava
on the same batches and prints a ratio line per mode (and, with ``--packing``, ours packed vs ours padded) (the figures themselves are measured, not asserted); ours
packed and with its decoder layers compiled (``--compile aot_eager``: no C compiler needed)."""

import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow  # a subprocess building both models
def test_bench_train_runs_both_modes():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step_benchmark.py"), "--steps", "1",
                           "--batch", "4", "--hidden", "32", "--layers", "1", "--vocab", "1000", "--no-memory",
                           "--packing", "--compile", "aot_eager"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^equal length: ratio [0-9.]+×$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^real mix: ratio [0-9.]+×$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^mix: [0-9]+% of the padded batches is padding", proc.stdout, re.M), proc.stdout
    assert re.search(r"^mix: ours packed [0-9,]+ useful tokens/s, ours padded [0-9,]+: packed vs padded [0-9.]+×$",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^mix: ours compiled \(aot_eager\) in an untimed pass", proc.stdout, re.M), proc.stdout
