"""The one batch type shared by training and evaluation, and the collate function that builds it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from lmm.text.tokenize import IGNORE_INDEX


@dataclass
class Example:
    """One processed sample: ids with ``IMAGE_TOKEN_INDEX`` markers, labels, and its images (``[n, 3, S, S]``)."""

    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None = None
    source: str = ""
    # HD only (lmm.data.hd_cells): one layout row per image; pixel_values then holds every view of every image.
    image_grids: torch.Tensor | None = None


@dataclass
class Skipped:
    """A sample dropped at load time: it is counted under its reason, never silently lost."""

    id: str
    reason: str
    detail: str = ""


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] (pad_id where attention_mask is 0), markers = IMAGE_TOKEN_INDEX
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor | None  # [B, T]
    pixel_values: torch.Tensor | None  # [N_images, 3, S, S], in marker order over the batch
    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    image_grids: torch.Tensor | None = None  # HD: [N_images, 7] layouts (lmm.data.hd_cells), else None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Batch":
        mv = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(mv(self.input_ids), mv(self.attention_mask), mv(self.labels), mv(self.pixel_values),
                     self.ids, self.sources, self.skipped, mv(self.image_grids))


def collate(items: list[Example | Skipped], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad a list of examples (skips are counted by reason) into a :class:`Batch`."""
    examples = [x for x in items if isinstance(x, Example)]
    skipped = Counter(x.reason for x in items if isinstance(x, Skipped))
    if not examples:
        empty = torch.zeros(0, 0, dtype=torch.long)
        return Batch(empty, empty.clone(), empty.clone(), None, skipped=skipped)
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
        ids[i, sl] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[i, sl] = torch.tensor(e.labels, dtype=torch.long)
        mask[i, sl] = 1
    pix = [e.pixel_values for e in examples if e.pixel_values is not None and len(e.pixel_values)]
    grids = [e.image_grids for e in examples if e.image_grids is not None and len(e.image_grids)]
    if grids and len(grids) != len(pix):
        raise ValueError("a batch mixes HD examples (with image_grids) and plain ones: use one image transform")
    return Batch(
        input_ids=ids, attention_mask=mask, labels=labels,
        pixel_values=torch.cat(pix) if pix else None,
        ids=[e.id for e in examples], sources=[e.source for e in examples],
        skipped=skipped,
        image_grids=torch.cat(grids) if grids else None,
    )
