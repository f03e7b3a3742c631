"""Tokenizers: a real one from a path / hub name, or a tiny Llama-style SentencePiece twin trained offline.

The twin is a real SentencePiece BPE model with byte fallback, split digits and a dummy prefix (Llama's settings),
wrapped in transformers' ``LlamaTokenizer`` with ``legacy=True`` — how Vicuna's tokenizer behaves in LLaVA — and
cached by a hash of its corpus, so it is trained once. Deterministic: one thread, every sentence in corpus order (no
sampling, no shuffle), SentencePiece's random generator seeded — the same corpus gives the same model file bytes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from lmm.common import build_once, digest


def default_cache_dir() -> Path:
    return Path(os.environ.get("LMM_CACHE", Path.home() / ".cache" / "lmm"))


def finalize_tokenizer(tok, model_max_length: int, padding_side: str = "right"):
    """LLaVA's settings: right padding for training, ``pad = unk`` (or eos when there is no unk)."""
    tok.model_max_length = model_max_length
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def keep_legacy_flag(tokenizer, folder: str | Path) -> None:
    """Write ``legacy=True`` into ``folder/tokenizer_config.json`` for a tokenizer that has it: transformers 5 does
    not save it, yet it decides how text after a special token (``</s>`` in multi-turn prompts) is split — a reload
    would tokenize differently."""
    path = Path(folder) / "tokenizer_config.json"
    if getattr(tokenizer, "legacy", None) is True and path.exists():
        cfg = json.loads(path.read_text())
        cfg["legacy"] = True
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """``save_pretrained`` that keeps ``legacy=True`` (:func:`keep_legacy_flag`)."""
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    keep_legacy_flag(tokenizer, folder)
    return folder


def load_tokenizer(name_or_path: str, model_max_length: int = 2048, padding_side: str = "right",
                   trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return finalize_tokenizer(tok, model_max_length, padding_side)


def train_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 1000, cache_dir: Path | None = None,
                         model_max_length: int = 2048) -> tuple[object, Path]:
    """Train (or load from cache) a Llama-style SentencePiece tokenizer on ``corpus``; returns (tokenizer, folder)."""
    from transformers import AutoTokenizer, LlamaTokenizer

    lines = [line for line in corpus if line.strip()]
    folder = Path(cache_dir or default_cache_dir()) / "tokenizers" / f"spm-{vocab_size}-{digest([lines, vocab_size], 16)}"

    def build(tmp: Path) -> None:
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.set_random_generator_seed(0)  # used only when sampling sentences, which the settings below never do
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, split_digits=True, add_dummy_prefix=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=1.0,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, hard_vocab_limit=False,
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,  # deterministic (module docstring)
        )
        (tmp / "tokenizer.model").write_bytes(buf.getvalue())
        tok = LlamaTokenizer.from_pretrained(str(tmp), legacy=True, add_bos_token=True, add_eos_token=False)
        tok.pad_token = tok.unk_token
        save_tokenizer(tok, tmp)

    build_once(folder, build, "tokenizer_config.json")
    tok = AutoTokenizer.from_pretrained(str(folder))
    return finalize_tokenizer(tok, model_max_length), folder
