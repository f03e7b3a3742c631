"""Padding-free packing: where each sample of a spliced micro-batch goes when the samples share rows.

Varlen FlashAttention-2 costs what the tokens cost, so it takes the whole micro-batch as one row. Every other
kernel transformers offers (SDPA, eager) turns per-sample position ids into a dense block-causal mask over the row,
whose cost grows with the row's length squared: one row of 32 samples costs up to 32× the attention of the padded batch.
There the samples go into rows no longer than the micro-batch's longest sample (first-fit decreasing), so a packed
step never does more attention work than the padded one and saves the padding everywhere else (MLP, norms, LM
head). A row's unused tail is a segment of its own (position ids from 0, no labels), so no sample attends to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmm.common import first_fit_decreasing

# attention implementations of transformers that keep packed samples apart from the position ids alone (block-causal
# masks for eager / sdpa / flex, varlen kernels for FlashAttention): packing is exact with these
PACKABLE_ATTENTION = frozenset({"eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3"})


def attention_of(llm: nn.Module) -> str:
    return str(getattr(llm.config, "_attn_implementation", ""))


def varlen(llm: nn.Module) -> bool:
    """Whether the LLM's attention is varlen FlashAttention (packed rows cost nothing extra: one row per batch)."""
    return attention_of(llm).startswith("flash_attention")


@dataclass
class RowLayout:
    rows: int
    width: int
    start: torch.Tensor  # [B] flat offset (row * width + column) of each sample's first token
    fill: torch.Tensor  # [rows] tokens of real samples in each row


def first_fit_rows(lengths: list[int], width: int) -> tuple[list[int], list[int], list[int]]:
    """Each sample's row and column, and each row's fill, by first-fit decreasing into rows of ``width``."""
    if lengths and max(lengths) > width:
        raise ValueError(f"a sample of {max(lengths)} tokens does not fit a row of {width}")
    bins = first_fit_decreasing(range(len(lengths)), lengths.__getitem__,
                                lambda b, total, i: total + lengths[i] <= width)
    row, col, fill = [0] * len(lengths), [0] * len(lengths), []
    for r, b in enumerate(bins):
        fill.append(0)
        for i in b:
            row[i], col[i] = r, fill[r]
            fill[r] += lengths[i]
    return row, col, fill


def row_layout(lengths: torch.Tensor, one_row: bool) -> RowLayout:
    """The layout of a micro-batch whose samples have ``lengths`` real tokens: one row of their sum (varlen
    kernels), or rows as wide as the longest sample (kernels that need a dense mask)."""
    n = [int(x) for x in lengths.tolist()]
    width = max(sum(n) if one_row else max(n, default=0), 1)
    row, col, fill = first_fit_rows(n, width)
    start = torch.tensor([r * width + c for r, c in zip(row, col)], dtype=torch.long, device=lengths.device)
    return RowLayout(max(len(fill), 1), width, start, torch.tensor(fill or [0], device=lengths.device))


def pack(layout: RowLayout, keep: torch.Tensor, embeds: torch.Tensor, position_ids: torch.Tensor,
         labels: torch.Tensor | None, ignore_index: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Right-padded ``[B, T, H]`` embeddings (``keep`` marks real tokens, ``position_ids`` count them) → the
    ``[rows, width, H]`` rows, their position ids (0.. per sample, and 0.. again over each row's unused tail), the
    labels (a sample's first token is no target of the token before it, the tail has none) and ``dest``: each real
    token's flat index in the rows."""
    T = keep.shape[1]
    dest = (layout.start[:, None] + torch.arange(T, device=keep.device))[keep]
    n = layout.rows * layout.width
    rows = embeds.new_zeros(n, embeds.shape[-1]).index_copy(0, dest, embeds[keep])
    col = torch.arange(layout.width, device=keep.device)
    pos = (col[None, :] - layout.fill[:, None]).clamp(min=0).flatten()  # the tails: a segment counted from 0
    pos = pos.index_copy(0, dest, position_ids[keep].to(pos.dtype)).view(layout.rows, layout.width)
    packed_labels = None
    if labels is not None:
        packed_labels = labels.new_full((n,), ignore_index).index_copy(0, dest, labels[keep])
        packed_labels = packed_labels.view(layout.rows, layout.width).masked_fill(pos == 0, ignore_index)
    return rows.view(layout.rows, layout.width, -1), pos, packed_labels, dest


def sample_order(dest: torch.Tensor, where: torch.Tensor, width: int) -> torch.Tensor:
    """The permutation that puts the target positions ``where`` (``[rows, width - 1]``, shifted: position ``c``
    predicts the token at ``c + 1``) back in the padded batch's order (sample by sample, token by token)."""
    rank = torch.full((where.shape[0] * width,), -1, dtype=torch.long, device=dest.device)
    rank[dest] = torch.arange(dest.numel(), device=dest.device)  # each real token's place in the samples' order
    r, c = where.nonzero(as_tuple=True)
    return rank[r * width + c + 1].argsort()
