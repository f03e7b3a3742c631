"""Image loading and LLaVA preprocessing: ``pad`` (expand2square with the mean colour) or ``square`` (resize +
centre crop), then CLIP-style resize (shortest edge, bicubic), centre crop, /255 and mean/std normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from lmm.imaging import CLIP_MEAN, CLIP_STD


class ImageLoadError(ValueError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (16-bit and 32-bit grey are rescaled, not clipped; alpha is dropped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB, or raise :class:`ImageLoadError` with a short reason."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError("missing_image", f"no file at {path}")
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError("corrupt_image", f"{path}: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev


def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


@dataclass(frozen=True)
class ImageTransform:
    """PIL RGB image → normalised ``[3, size, size]`` float tensor, as LLaVA's ``process_images``."""

    size: int = 336
    aspect: str = "pad"  # "pad" | "square"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        if self.aspect not in ("pad", "square"):
            raise ValueError(f"image aspect must be 'pad' or 'square', got {self.aspect!r}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = to_rgb(img)
        if self.aspect == "pad":
            img = expand2square(img, tuple(int(x * 255) for x in self.mean))
        w, h = img.size
        # CLIPImageProcessor: shortest edge → size, the long edge truncated (``int``), bicubic.
        nw, nh = (self.size, int(self.size * h / w)) if w <= h else (int(self.size * w / h), self.size)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std
