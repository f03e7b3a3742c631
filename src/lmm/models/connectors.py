"""Connectors (LLaVA's "projector"): ``linear``, ``mlp{N}x_gelu`` (parsed as LLaVA does), ``identity``, and
``qformer`` (transformers' ``Blip2QFormerModel`` with our own learned queries and output projection)."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


class QFormerConnector(nn.Module):
    """InstructBLIP-style resampler: ``num_queries`` learned queries cross-attend to the vision features."""

    def __init__(self, vision_hidden: int, llm_hidden: int, num_queries: int = 32, hidden_size: int = 768,
                 num_hidden_layers: int = 12, num_attention_heads: int = 12, intermediate_size: int | None = None,
                 cross_attention_frequency: int = 2, **_: Any):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        cfg = Blip2QFormerConfig(
            hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size or 4 * hidden_size, encoder_hidden_size=vision_hidden,
            cross_attention_frequency=cross_attention_frequency,
        )
        self.qformer = Blip2QFormerModel(cfg)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, hidden_size))
        nn.init.normal_(self.query_tokens, std=cfg.initializer_range)
        self.proj = nn.Linear(hidden_size, llm_hidden)
        self.num_queries = num_queries

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_queries

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        q = self.query_tokens.expand(feats.shape[0], -1, -1).to(feats.dtype)
        out = self.qformer(query_embeds=q, encoder_hidden_states=feats).last_hidden_state
        return self.proj(out[:, : self.num_queries])


class TokenwiseConnector(nn.Sequential):
    """Linear / MLP / identity applied to every vision token; the token count is unchanged."""

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens


def build_connector(name: str, vision_hidden: int, llm_hidden: int, **kwargs: Any) -> nn.Module:
    if name == "linear":
        return TokenwiseConnector(nn.Linear(vision_hidden, llm_hidden))
    if name == "identity":
        if vision_hidden != llm_hidden:
            raise ValueError(f"identity connector needs equal widths, got {vision_hidden} → {llm_hidden}")
        return TokenwiseConnector(nn.Identity())
    m = _MLP.match(name)
    if m:
        depth = int(m.group(1))
        layers: list[nn.Module] = [nn.Linear(vision_hidden, llm_hidden)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(llm_hidden, llm_hidden)]
        return TokenwiseConnector(*layers)
    if name == "qformer":
        return QFormerConnector(vision_hidden, llm_hidden, **kwargs)
    raise ValueError(f"unknown connector {name!r}; known: linear, identity, mlp<N>x_gelu (e.g. mlp2x_gelu), qformer")
