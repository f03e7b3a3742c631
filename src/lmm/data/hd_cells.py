"""LLaVA-1.5-HD cells (paper §3.4, App. A.1) — the data side: grid choice, pad/resize to the grid, cut the cells.

Not the repo's later "anyres" (LLaVA-1.6); see ``shared/spec/llava_recipe.md`` §1.4 for the difference.

Grid selection rule (:func:`select_grid`): the candidates are every ``rows × cols`` grid of at most ``max_cells``
cells of the encoder's native size ``S`` (for 6: 1x1…1x6, 2x2, 2x3 and their transposes). For each candidate
canvas (``cols·S × rows·S``) the image is scaled to fit inside, keeping its aspect ratio; the grid that shows the
most *effective* pixels wins (scaled pixels, capped at the image's own pixel count, so upscaling earns nothing),
ties go to the least padding, then to fewer cells. This is the scoring of LLaVA's ``select_best_resolution``
applied to the paper's grids.

The image is then resized to fit the canvas (bicubic, aspect kept), pasted centred on a canvas filled with the
normalisation mean colour (so the padding is 0 after normalisation, as LLaVA's ``expand2square`` pad), normalised
and cut into cells in row-major order. With global context, the whole image as the ordinary ``pad`` transform
makes it (pad to square + resize to ``S``) comes first.

Each image is described by an ``HD layout`` row of 7 integers (:data:`LAYOUT_FIELDS`): the grid, the content box
on the canvas in pixels (the model drops the features that cover padding only), and the number of global views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lmm.data.images import ImageTransform, to_rgb
from lmm.imaging import CLIP_MEAN, CLIP_STD, candidate_grids


def select_grid(width: int, height: int, cell: int, max_cells: int = 6) -> tuple[int, int]:
    """The ``(rows, cols)`` grid for a ``width × height`` image (rule in the module docstring)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    best, best_key = None, None
    for rows, cols in candidate_grids(max_cells):
        canvas_w, canvas_h = cols * cell, rows * cell
        scale = min(canvas_w / width, canvas_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = canvas_w * canvas_h - effective
        key = (-effective, wasted)
        if best_key is None or key < best_key:  # strict: ties keep the earlier (fewer cells) grid
            best, best_key = (rows, cols), key
    return best


def fit_box(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of the image scaled to fit the canvas with its aspect ratio kept, centred."""
    scale = min(canvas_w / width, canvas_h / height)
    w = min(canvas_w, max(1, round(width * scale)))
    h = min(canvas_h, max(1, round(height * scale)))
    return (canvas_h - h) // 2, (canvas_w - w) // 2, h, w


@dataclass
class HDImage:
    """One image prepared for HD: ``pixel_values [n_global + rows·cols, 3, S, S]`` (global view first, then the
    cells row by row) and its layout row (:data:`LAYOUT_FIELDS`)."""

    pixel_values: torch.Tensor
    layout: tuple[int, int, int, int, int, int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return self.layout[0], self.layout[1]


@dataclass(frozen=True)
class HDImageTransform:
    """PIL image → :class:`HDImage` at the encoder's native ``size`` (LLaVA-1.5-HD preprocessing).

    ``aspect`` is how the global view is made (``pad`` as LLaVA-1.5, or ``square``); the cells always pad."""

    size: int = 224
    max_cells: int = 6
    global_context: bool = True
    aspect: str = "pad"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        candidate_grids(self.max_cells)  # validates max_cells
        ImageTransform(self.size, self.aspect, self.mean, self.std)  # validates aspect

    def grid_for(self, img: Image.Image) -> tuple[int, int]:
        return select_grid(img.width, img.height, self.size, self.max_cells)

    def __call__(self, img: Image.Image) -> HDImage:
        img = to_rgb(img)
        rows, cols = self.grid_for(img)
        S = self.size
        canvas_w, canvas_h = cols * S, rows * S
        top, left, h, w = fit_box(img.width, img.height, canvas_w, canvas_h)
        canvas = Image.new("RGB", (canvas_w, canvas_h), tuple(int(x * 255) for x in self.mean))
        canvas.paste(img.resize((w, h), Image.Resampling.BICUBIC), (left, top))
        x = torch.from_numpy(np.asarray(canvas, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        x = (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)
        cells = x.reshape(3, rows, S, cols, S).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, S, S)
        views = [cells]
        if self.global_context:
            views.insert(0, ImageTransform(S, self.aspect, self.mean, self.std)(img).unsqueeze(0))
        return HDImage(torch.cat(views), (rows, cols, top, left, h, w, int(self.global_context)))


def transform_images(transform, images: list[Image.Image]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Apply ``transform`` (an :class:`ImageTransform` or an :class:`HDImageTransform`) to a sample's images.

    Returns ``(pixel_values, image_grids)``: ``[n_images, 3, S, S]`` and ``None`` for the plain transform;
    all views concatenated and an ``[n_images, 7]`` long tensor of layouts for HD."""
    if not images:
        return None, None
    out = [transform(im) for im in images]
    if isinstance(out[0], HDImage):
        return (torch.cat([o.pixel_values for o in out]),
                torch.tensor([o.layout for o in out], dtype=torch.long))
    return torch.stack(out), None


def image_transform_for(model, aspect: str = "pad") -> ImageTransform | HDImageTransform:
    """The image transform a model needs (read from its ``vision`` tower and ``hd`` merger, duck-typed):
    :class:`HDImageTransform` for an HD model with HD active, else :class:`ImageTransform`."""
    v = model.vision
    hd = getattr(model, "hd", None)
    if hd is None or not getattr(model, "hd_active", True):
        return ImageTransform(v.image_size, aspect, v.image_mean, v.image_std)
    return HDImageTransform(v.image_size, hd.max_cells, hd.global_context, aspect, v.image_mean, v.image_std)
