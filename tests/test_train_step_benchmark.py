"""benchmarks/train_step_benchmark.py (`make bench-train`) at toy size: it runs both modes against transformers' Llava
on the same batches and prints a ratio line per mode (and, with ``--packing``, ours packed vs ours padded) (the figures
themselves are measured, not asserted); ours packed and with its decoder layers compiled (``--compile aot_eager``: no
C compiler needed). ``--shape 7b`` runs a model of LLaVA-1.5-7B's proportions (LM head / decoder FLOPs, attention's
share at the length cap, image tokens per cap) scaled to a CPU, beside the toy shape."""

import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", REPO / "benchmarks" / "train_step_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_7b_shape_keeps_the_paper_models_proportions():
    """The 7b preset against LLaVA-1.5-7B as the configs describe it (Vicuna-7B's arch block, CLIP-336's 576 image
    tokens, model.max_length 2048): the LM head's FLOPs per token over the decoder's, attention's share of a layer's
    FLOPs at the cap, and the image's share of the cap match; the toy shape's head outweighs its decoder."""
    bench = _bench()
    paper, seven, toy = bench.paper_proportions(), bench.proportions(bench.SHAPES["7b"]), bench.proportions(
        bench.SHAPES["toy"])
    assert paper["head_vs_decoder"] == pytest.approx(32000 * 4096 / (32 * (4 * 4096**2 + 3 * 4096 * 11008)))
    for key in ("head_vs_decoder", "attention_share", "image_share"):
        assert seven[key] == pytest.approx(paper[key], rel=0.03), key
    assert toy["head_vs_decoder"] > 1 > 0.05 > paper["head_vs_decoder"]


@pytest.mark.slow  # a subprocess building both models, at both shapes
def test_bench_train_runs_both_modes():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step_benchmark.py"), "--steps", "1",
                           "--batch", "4", "--hidden", "32", "--layers", "1", "--vocab", "1000", "--no-memory",
                           "--packing", "--compile", "aot_eager", "--shape", "toy", "7b"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^equal length: ratio [0-9.]+×$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^real mix: ratio [0-9.]+×$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^mix: [0-9]+% of the padded batches is padding", proc.stdout, re.M), proc.stdout
    assert re.search(r"^mix: ours packed [0-9,]+ useful tokens/s, ours padded [0-9,]+: packed vs padded [0-9.]+×$",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^mix: ours compiled \(aot_eager\) in an untimed pass", proc.stdout, re.M), proc.stdout
    assert re.search(r"^shape 7b: .*LM head / decoder FLOPs 2\.0 % \(LLaVA-1\.5-7B 2\.0 %\)", proc.stdout, re.M)
    assert re.search(r"^7b-proportioned equal length: ratio [0-9.]+×$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^7b-proportioned real mix: ratio [0-9.]+×$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^7b-proportioned real mix: per-batch ratio median [0-9.]+× \(range [0-9.]+–[0-9.]+× over 1 "
                     r"batches\)$", proc.stdout, re.M), proc.stdout
