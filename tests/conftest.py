import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.setdefault("LMM_CACHE", str(REPO / ".cache" / "lmm-test")))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny Llama-style SentencePiece tokenizer (legacy=True, as Vicuna's in LLaVA), trained once."""
    from lmm.synth import tokenizer_corpus
    from lmm.text.tokenizer import train_tiny_tokenizer

    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000, CACHE, 2048)
    return tok


TINY_VISION = dict(kind="hf", model_type="clip", config=dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28, patch_size=7))
TINY_LLM = dict(model_type="llama", config=dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))


@pytest.fixture
def tiny_model(tiny_tokenizer):
    import torch

    from lmm.models.build import build_llava

    torch.manual_seed(0)
    return build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)
