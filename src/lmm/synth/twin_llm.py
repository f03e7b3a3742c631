"""A tiny twin of a *pretrained, chat-tuned* LLM, built offline (``model.llm.twin.pretrain``, on in the Vicuna configs).

Vicuna arrives knowing its language and how to answer about what its context says; LLaVA's stage 1 only teaches the
connector to put image features where the LLM's words are. A random LLM twin knows nothing, so stage 1 cannot
align anything (caption loss 6.9 → 6.7 on the synthetic captions) and stage 2 must learn language and vision at
once. With ``pretrain`` the random twin is first trained, once, on text conversations of the twin world (a scene
described in words, then the questions of an image source: :func:`lmm.synth.sources.described_conversation`) in
the LLM's chat template, and saved as a transformers checkpoint under the cache that ``from_pretrained`` loads like
the real LLM. Then stage 1 aligns (caption loss 4.3 → 1.0 in 128 steps), and stage 2 learns what a random twin
does not within a CPU budget: whether a shape named in the question is in the image (POPE-like 50 % → 96 %, see
``tests/training/test_learning.py``). 1000 steps of 32 (≈ 4 min on 2 cores, once); 400 steps were not enough. Cached by a
hash of the twin config, the tokenizer, the template and the synthetic data version; deterministic under ``seed``
(its own, 0 in the configs: the "released" Vicuna every run shares, not the run's ``seed``): on one machine the
same bytes in any fresh cache, whatever the process's thread count (trained with one thread,
:mod:`lmm.synth.twin_cache`).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch

from lmm.data.batch import Example, collate
from lmm.models.build import random_twin_config
from lmm.models.llm import build_llm
from lmm.synth.sources import described_conversation
from lmm.synth.twin_cache import cached_twin, fit, save_twin
from lmm.text.templates import get_template
from lmm.text.tokenize import tokenize_conversation

LLM_TWIN_VERSION = 1
DEFAULTS = {"steps": 1000, "batch_size": 32, "lr": 1.0e-3, "weight_decay": 0.0, "seed": 0}


def pretrain_twin_llm(llm: dict[str, Any], tokenizer, template: str, cache_dir: str | Path) -> Path:
    """Train (or find in ``cache_dir/llms``) the chat-tuned twin of the LLM config ``llm`` (a ``model/llm`` group
    dict whose ``twin`` block has ``pretrain``); returns the checkpoint folder."""
    twin = dict(llm["twin"])
    settings = {**DEFAULTS, **(twin.pop("pretrain") or {})}
    config = random_twin_config(llm)["config"]
    config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vocab = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()[:12]
    key = {"v": LLM_TWIN_VERSION, "model_type": llm.get("model_type", "llama"), "config": config,
           "template": template, "vocab": vocab, "pretrain": settings}
    return cached_twin(cache_dir, "llms", key, settings["seed"],
                       lambda folder, key: _pretrain(config, tokenizer, template, settings, key, folder))


def _pretrain(config: dict, tokenizer, template: str, settings: dict, key: dict, folder: Path) -> Path:
    model = build_llm(config=config, model_type=key["model_type"]).train()
    rng, tpl = random.Random(settings["seed"]), get_template(template)

    def step_loss() -> torch.Tensor:
        examples = []
        for _ in range(settings["batch_size"]):
            tok = tokenize_conversation(described_conversation(rng), tpl, tokenizer)
            examples.append(Example("text", tok.input_ids, tok.labels, None))
        batch = collate(examples, tokenizer.pad_token_id)
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss

    loss = fit(step_loss, list(model.parameters()), settings, f"LLM twin {folder.name}")
    return save_twin(model, folder, key, loss)
