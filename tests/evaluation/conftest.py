"""Fixtures for the evaluation tests: LLaVA's eval samples (tests/fixtures), small file writers, a tiny model
folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def eval_samples() -> Path:
    """LLaVA's ``playground/data/eval`` sample layout (read-only), kept in the repository: tests/fixtures/README.md."""
    return REPO_ROOT / "tests" / "fixtures" / "llava_eval_samples"


def _write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def write_jsonl() -> Callable[[Path, Iterable[Any]], Path]:
    return _write_jsonl


@pytest.fixture
def write_json() -> Callable[[Path, Any], Path]:
    return _write_json


def answer(question_id: Any, text: str, prompt: str = "q", **extra: Any) -> dict[str, Any]:
    """A LLaVA answer record."""
    record = {
        "question_id": question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": f"a{question_id}",
        "model_id": "test",
        "metadata": {},
    }
    record.update(extra)
    return record


@pytest.fixture
def make_answer() -> Callable[..., dict[str, Any]]:
    return answer


MODEL_SPEC = {"model": {"vision": None, "connector": {"name": "mlp2x_gelu"}, "llm": None, "max_length": 512},
              "template": "vicuna_v1", "image_aspect_ratio": "pad", "max_length": 512}


@pytest.fixture
def model_folder(tiny_tokenizer, tmp_path) -> Path:
    """A tiny random model saved as ``train.py`` saves one: ``<tmp>/run/finetune/model``."""
    import torch
    from conftest import TINY_LLM, TINY_VISION

    from lmm.models.build import build_llava
    from lmm.models.checkpoint import save_model_dir

    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)
    spec = {**MODEL_SPEC, "model": {**MODEL_SPEC["model"], "vision": TINY_VISION, "llm": TINY_LLM}}
    return save_model_dir(model, tiny_tokenizer, spec, tmp_path / "run" / "finetune" / "model")
