"""LLaVA-1.5-HD (paper §3.4, App. A.1) — the model side: merge the encoded cells into one image sequence.

The cells of an image (prepared by the data side, ``lmm.data.hd_cells``) are encoded independently by the
frozen tower and the connector, in one batch with every other view of the batch. Per image, :class:`HDMerger` then

1. puts the cells' ``g × g`` feature maps back together into one ``rows·g × cols·g`` map (row-major cells),
2. drops the feature rows / columns whose patch covers padding only (a patch touching the content box is kept),
3. appends a learned row-end token after every feature row and flattens the map row by row,
4. puts the features of the downsampled whole image (global context, ``g²`` tokens) in front, unless switched off
   (the paper's "high-res patch only" ablation).

So an image yields ``n_global·g² + R·(C + 1)`` tokens for the kept ``R × C`` feature map: a different count per image,
which the splice places as it does fixed-size features. The row-end token (``hd.row_end``, shape ``[H]``, initialised
``randn / sqrt(H)`` as LLaVA's ``image_newline``) trains with the connector (see ``training/stages.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmm.imaging import LAYOUT_FIELDS, candidate_grids


class HDMerger(nn.Module):
    def __init__(self, hidden_size: int, grid_side: int, patch_size: int, max_cells: int = 6,
                 global_context: bool = True):
        super().__init__()
        self.row_end = nn.Parameter(torch.randn(hidden_size) / math.sqrt(hidden_size))
        self.grid_side, self.patch_size = grid_side, patch_size
        self.max_cells, self.global_context = max_cells, global_context

    @property
    def n_global(self) -> int:
        return int(self.global_context)

    def kept_box(self, layout) -> tuple[int, int, int, int]:
        """Feature rows ``[r0, r1)`` and columns ``[c0, c1)`` of the merged map that touch the content box."""
        _, _, top, left, h, w, _ = (int(v) for v in layout)
        P = self.patch_size
        return top // P, -(-(top + h) // P), left // P, -(-(left + w) // P)

    def num_tokens(self, layout) -> int:
        r0, r1, c0, c1 = self.kept_box(layout)
        return self.n_global * self.grid_side ** 2 + (r1 - r0) * (c1 - c0 + 1)

    @property
    def max_num_tokens(self) -> int:
        """The most tokens one image can yield (the widest grid, no padding) — a bound for length budgets."""
        g = self.grid_side
        return max(self.n_global * g * g + r * g * (c * g + 1) for r, c in candidate_grids(self.max_cells))

    def num_views(self, image_grids: torch.Tensor) -> int:
        return int((image_grids[:, 0] * image_grids[:, 1] + image_grids[:, 6]).sum())

    def check(self, image_grids: torch.Tensor, n_views: int) -> None:
        if image_grids.ndim != 2 or image_grids.shape[1] != len(LAYOUT_FIELDS):
            raise ValueError(f"image_grids must be [n_images, {len(LAYOUT_FIELDS)}] {LAYOUT_FIELDS}, "
                             f"got {tuple(image_grids.shape)}")
        n_global = set(image_grids[:, 6].tolist())
        if n_global != {self.n_global}:
            raise ValueError(f"the model has global_context={self.global_context} but the images were prepared "
                             f"with {sorted(n_global)} global view(s): build the transform with hd_image_transform")
        cells = (image_grids[:, 0] * image_grids[:, 1])
        if int(cells.max()) > self.max_cells or int(image_grids[:, :2].min()) < 1:
            raise ValueError(f"HD grids must have 1..{self.max_cells} cells, got {image_grids[:, :2].tolist()}")
        S = self.grid_side * self.patch_size
        r, c, top, left, h, w = (image_grids[:, k] for k in range(6))
        if bool(((top < 0) | (left < 0) | (h < 1) | (w < 1) | (top + h > r * S) | (left + w > c * S)).any()):
            raise ValueError(f"an HD content box lies outside its {S}px-cell canvas: {image_grids.tolist()}")
        if self.num_views(image_grids) != n_views:
            raise ValueError(f"image_grids describe {self.num_views(image_grids)} views but pixel_values has {n_views}")

    def forward(self, feats: torch.Tensor, image_grids: torch.Tensor) -> list[torch.Tensor]:
        """``feats [n_views, g², H]`` (connector output, in view order) → one ``[n_tokens, H]`` tensor per image."""
        g = self.grid_side
        if feats.shape[1] != g * g:
            raise ValueError(f"HD expects {g}×{g} features per view, got {feats.shape[1]}")
        H = feats.shape[-1]
        row_end = self.row_end.to(feats.dtype)
        out, v = [], 0
        for layout in image_grids.tolist():
            rows, cols, n_global = layout[0], layout[1], layout[6]
            parts = [feats[v:v + n_global].reshape(-1, H)]
            v += n_global
            cells = feats[v:v + rows * cols].reshape(rows, cols, g, g, H)
            v += rows * cols
            fmap = cells.permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, H)
            r0, r1, c0, c1 = self.kept_box(layout)
            fmap = fmap[r0:r1, c0:c1]
            fmap = torch.cat([fmap, row_end.expand(fmap.shape[0], 1, H)], dim=1)
            parts.append(fmap.reshape(-1, H))
            out.append(torch.cat(parts))
        return out


def build_hd(tower, connector, llm_hidden: int, hd: Any) -> HDMerger | None:
    """The :class:`HDMerger` for ``model.hd`` (``{enabled, max_cells, global_context}``), or ``None`` when off."""
    if not hd or not hd.get("enabled", False):
        return None
    unknown = set(hd) - {"enabled", "max_cells", "global_context"}
    if unknown:
        raise ValueError(f"unknown model.hd keys {sorted(unknown)}; known: enabled, max_cells, global_context")
    if getattr(tower, "select_feature", "patch") != "patch":
        raise ValueError("HD needs select_feature 'patch' (a square map of patch features, no CLS)")
    g = math.isqrt(tower.num_patches)
    if g * g != tower.num_patches or tower.image_size % g:
        raise ValueError(f"HD needs a square patch grid; the tower has {tower.num_patches} patches at "
                         f"{tower.image_size}px")
    if connector.num_output_tokens(tower.num_tokens) != tower.num_tokens:
        raise ValueError("HD needs a token-wise connector (linear / mlp*x_gelu): it merges spatial feature maps")
    return HDMerger(llm_hidden, g, tower.image_size // g, int(hd.get("max_cells", 6)),
                    bool(hd.get("global_context", True)))
