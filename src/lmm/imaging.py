"""Image facts the data side (:mod:`lmm.data.images`, :mod:`lmm.data.hd_cells`) and the model side
(:mod:`lmm.models.vision`, :mod:`lmm.models.hd`) must agree on, kept here so neither imports the other: CLIP's
normalisation and the HD cell layout (the candidate grids and the fields of a per-image layout row)."""

from __future__ import annotations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

LAYOUT_FIELDS = ("rows", "cols", "top", "left", "height", "width", "n_global")


def candidate_grids(max_cells: int = 6) -> list[tuple[int, int]]:
    """Every ``(rows, cols)`` with ``rows·cols ≤ max_cells``, fewest cells first (then fewer rows)."""
    if max_cells < 1:
        raise ValueError(f"max_cells must be ≥ 1, got {max_cells}")
    grids = [(r, c) for r in range(1, max_cells + 1) for c in range(1, max_cells + 1) if r * c <= max_cells]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))
