"""Synthetic twins: procedural scenes (``scenes``), every training source in LLaVA's layout (``sources``), and every
benchmark in ``playground/data/eval`` layout (``benchmarks``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmm.data.synth.benchmarks import write_synthetic_benchmarks
from lmm.data.synth.sources import corpus, write_llava_data


def write_twin(spec: dict[str, Any]) -> Path:
    """Write a training-data twin described by a data config's ``twin`` block (``root`` + generator params)."""
    params = dict(spec)
    kind = params.pop("writer", "llava")
    root = params.pop("root")
    if kind == "llava":
        return write_llava_data(root, **params)
    if kind == "basic":
        from lmm.data.synthetic import write_synthetic

        return Path(write_synthetic(root, **params)["pretrain"]).parent
    raise ValueError(f"unknown twin writer {kind!r}; known: llava, basic")


def twin_spec(data_cfg: dict) -> dict[str, Any] | None:
    """The twin a data config asks for (``write_twin``'s argument), or None for real data: ``kind: synthetic`` is
    the small test twin (``lmm.data.synthetic``); ``twin_enabled`` (``scale=tiny``) the official-layout twin."""
    if data_cfg.get("kind") == "synthetic":
        keys = ("root", "n_pretrain", "n_finetune", "text_only_share", "image_size", "seed")
        return {"writer": "basic", **{k: data_cfg[k] for k in keys if k in data_cfg}}
    if data_cfg.get("twin_enabled"):
        return {"writer": "llava", "root": data_cfg["root"], **data_cfg["twin"]}
    return None


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: template strings and every synthetic source's language."""
    from lmm.data.synthetic import tokenizer_corpus as basic_corpus

    return basic_corpus(seed) + corpus(seed)


__all__ = ["corpus", "tokenizer_corpus", "write_llava_data", "write_synthetic_benchmarks", "write_twin"]
