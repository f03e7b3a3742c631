"""The synthetic world: procedural scenes (``scenes``), every training source in LLaVA's layout (``sources``), a
small test world (``basic``), every benchmark in ``playground/data/eval`` layout (``benchmarks``), the pretrained
twins of the backbones (``twin_tower``, ``twin_llm``), and what a run needs of it, prepared before it starts
(``world``). Nothing below the entry points imports this package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmm.synth.benchmarks import write_synthetic_benchmarks
from lmm.synth.sources import corpus, write_llava_data


def write_twin(spec: dict[str, Any]) -> Path:
    """Write a training-data twin: ``root``, ``writer`` (``llava``: the official layout, :mod:`lmm.synth.sources`;
    ``basic``: the small test world, :mod:`lmm.synth.basic`) and the writer's parameters."""
    params = dict(spec)
    kind = params.pop("writer", "llava")
    root = params.pop("root")
    if kind == "llava":
        return write_llava_data(root, **params)
    if kind == "basic":
        from lmm.synth.basic import write_synthetic

        return Path(write_synthetic(root, **params)["pretrain"]).parent
    raise ValueError(f"unknown twin writer {kind!r}; known: llava, basic")


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: template strings and every synthetic source's language."""
    from lmm.synth.basic import tokenizer_corpus as basic_corpus

    return basic_corpus(seed) + corpus(seed)


__all__ = ["corpus", "tokenizer_corpus", "write_llava_data", "write_synthetic_benchmarks", "write_twin"]
