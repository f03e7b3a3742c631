"""The language model: any transformers causal LM, from a checkpoint or as a random twin from a small config."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_llm(name_or_path: str | None = None, config: dict[str, Any] | None = None, model_type: str = "llama",
              dtype: str | None = None, attn_implementation: str | None = None,
              gradient_checkpointing: bool = False, trust_remote_code: bool = False, **_: Any) -> nn.Module:
    import torch
    import transformers

    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if name_or_path:
        if dtype:
            kwargs["dtype"] = getattr(torch, dtype)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    else:
        cfg = transformers.AutoConfig.for_model(model_type, **(config or {}))
        model = transformers.AutoModelForCausalLM.from_config(cfg, **kwargs)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model
