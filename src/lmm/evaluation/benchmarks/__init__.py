"""The twelve LLaVA-1.5 benchmarks, by name.

>>> bench = get_benchmark("pope")
>>> questions = bench.questions(data_root)            # prompts + images, official order
>>> result = bench.score("answers.jsonl", data_root)  # official-exact scores + counts + warnings
"""

from __future__ import annotations

from lmm.evaluation.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    JudgeNotConfiguredError,
    Question,
)
from lmm.evaluation.benchmarks.gqa import GQA
from lmm.evaluation.benchmarks.llava_wild import LLaVAWild
from lmm.evaluation.benchmarks.mmbench import MMBench
from lmm.evaluation.benchmarks.mme import MME
from lmm.evaluation.benchmarks.mmvet import MMVet
from lmm.evaluation.benchmarks.pope import POPE
from lmm.evaluation.benchmarks.scienceqa import ScienceQA
from lmm.evaluation.benchmarks.seed import SEED
from lmm.evaluation.benchmarks.textvqa import TextVQA
from lmm.evaluation.benchmarks.vizwiz import VizWiz
from lmm.evaluation.benchmarks.vqav2 import VQAv2

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkDataError",
    "JudgeNotConfiguredError",
    "Question",
    "get_benchmark",
]

BENCHMARKS: dict[str, Benchmark] = {
    "vqav2": VQAv2(),
    "gqa": GQA(),
    "vizwiz": VizWiz(),
    "scienceqa": ScienceQA(),
    "textvqa": TextVQA(),
    "pope": POPE(),
    "mme": MME(),
    "mmbench": MMBench(name="mmbench", lang="en"),
    "mmbench_cn": MMBench(name="mmbench_cn", lang="cn"),
    "seed": SEED(),
    "llava_wild": LLaVAWild(),
    "mmvet": MMVet(),
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called exactly ``name``."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
