"""Image facts the data side (:mod:`lmm.data.images`, :mod:`lmm.data.hd_cells`) and the model side
(:mod:`lmm.models.vision`, :mod:`lmm.models.hd`) must agree on, kept here so neither imports the other: CLIP's
normalisation, the HD cell layout (the candidate grids and the fields of a per-image layout row), and the one limit
on the pixels of an image anything decodes (:func:`max_image_pixels`)."""

from __future__ import annotations

import os

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

LAYOUT_FIELDS = ("rows", "cols", "top", "left", "height", "width", "n_global")


def candidate_grids(max_cells: int = 6) -> list[tuple[int, int]]:
    """Every ``(rows, cols)`` with ``rows·cols ≤ max_cells``, fewest cells first (then fewer rows)."""
    if max_cells < 1:
        raise ValueError(f"max_cells must be ≥ 1, got {max_cells}")
    grids = [(r, c) for r in range(1, max_cells + 1) for c in range(1, max_cells + 1) if r * c <= max_cells]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


# The most pixels (width × height) an image may have to be decoded: checked from the header, before a pixel is
# decoded, by every image read (the converter's verification, the training loader, evaluation's images). 2**25 ≈
# 33.5 Mpx: an 8K frame (7680×4320 = 33.2 Mpx) fits, and LLaVA-1.5's images (LCS-558K, COCO, GQA/VG, OCR-VQA,
# TextVQA; the benchmarks') are at most a few megapixels. Decoded, such an image is ≈ 100 MB as RGB. PIL's own
# limit (89.5 Mpx, a warning; an error only above twice that) lets a 157 KB 81-Mpx 16-bit PNG through.
MAX_IMAGE_PIXELS = 2**25
MAX_IMAGE_PIXELS_ENV = "LMM_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit in force: ``$LMM_MAX_IMAGE_PIXELS`` when set (read at each call), else
    :data:`MAX_IMAGE_PIXELS`. Not a whole number ≥ 1 → :class:`ValueError` naming the variable."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV}={text!r}: the image pixel limit must be a whole number >= 1")
    return value
