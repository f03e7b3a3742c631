"""`make bench-gen` (benchmarks/generation_benchmark.py) measures the fast mode (batched, bf16) against the official
one (batch 1, fp16, eval=official) on the same questions and says how many answers differ (issue 22 item 2); with
fp32 on both sides batching changes nothing."""

import importlib.util

from conftest import REPO

spec = importlib.util.spec_from_file_location("generation_benchmark", REPO / "benchmarks" / "generation_benchmark.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_fast_mode_against_the_official_mode(capsys):
    out = bench.main(["--questions", "6", "--max-new-tokens", "3", "--batch-size", "3"])
    printed = capsys.readouterr().out
    assert out["official"] == {"batch_size": 1, "dtype": "float16"} and out["fast"] == {"batch_size": 3,
                                                                                        "dtype": "bfloat16"}
    assert out["questions"] == 6 and 0 <= out["differing_answers"] <= 6
    assert f"answers that differ: {out['differing_answers']} of 6" in printed
    assert "official (batch 1, float16)" in printed and "fast (batch 3, bfloat16)" in printed


def test_batching_alone_changes_no_answer_in_fp32():
    out = bench.main(["--questions", "4", "--max-new-tokens", "3", "--batch-size", "4", "--fast-dtype", "float32",
                      "--official-dtype", "float32"])
    assert out["differing_answers"] == 0 and out["fast"]["dtype"] == out["official"]["dtype"] == "float32"
