"""Image reading and LLaVA preprocessing. Reading: one decoder (:func:`decode_image`) for every image anything
decodes, from bytes (a shard member, a base64 image) or a file (:func:`load_image`): only JPEG, PNG, GIF, BMP, WebP
and TIFF are opened (no other PIL plugin, e.g. EPS, which runs Ghostscript, ever sees the bytes), the pixel count is
checked from the header against :func:`lmm.imaging.max_image_pixels` before a pixel is decoded, and the result is
8-bit RGB. Preprocessing: ``pad`` (expand2square with the mean colour) or ``square`` (resize + centre crop), then
CLIP-style resize (shortest edge, bicubic), centre crop, /255 and mean/std normalisation."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from lmm.common import open_regular
from lmm.imaging import CLIP_MEAN, CLIP_STD, MAX_IMAGE_PIXELS_ENV, max_image_pixels

# The extensions an image may have in a record (the converter's member names, ``jpeg`` stored as ``jpg``): each is an
# image to WebDataset's own decoders, so a plain ``wds.WebDataset(...).decode()`` of our shards never unpickles,
# torch.loads or numpy-loads a member. A file without an extension is named by its content (:func:`image_format`).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff")
# The PIL formats opened (a JPEG with a second picture, as some cameras write, opens as MPO) → the member extension.
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}
FORMAT_NAMES = "JPEG, PNG, GIF, BMP, WebP or TIFF"
# A file larger than any image within the pixel limit could be (16-bit RGBA, uncompressed, + room for metadata) is
# refused unread: the limit bounds what a read of a file holds in memory too.
BYTES_PER_PIXEL, HEADER_BYTES = 8, 16 << 20


class ImageLoadError(ValueError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@cache
def _grey16_table() -> np.ndarray:
    # every 16-bit value → 8 bits by the float64 formula used before (bit-identical), as one 64 KB lookup table
    return np.clip(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (16-bit and 32-bit grey are rescaled, not clipped; alpha is dropped). 16-bit grey goes
    through a lookup table and 32-bit grey a block of rows at a time, never a float64 copy of the whole image."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        return Image.fromarray(_grey16_table()[np.asarray(img)]).convert("RGB")
    if img.mode in ("I", "F"):
        arr = np.asarray(img)
        hi = max(float(arr.max()), 1.0) if arr.size else 1.0
        out = np.empty(arr.shape, np.uint8)
        rows = max(1, (1 << 20) // max(arr.shape[1], 1))
        for r in range(0, arr.shape[0], rows):
            out[r:r + rows] = np.clip(arr[r:r + rows].astype(np.float64) / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(out).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_image(data: bytes, name: str = "") -> Image.Image:
    """Image bytes → fully decoded 8-bit RGB, or :class:`ImageLoadError`: ``image_too_large`` (more pixels than
    :func:`~lmm.imaging.max_image_pixels`, seen from the header, nothing decoded) or ``corrupt_image`` (truncated,
    broken, or not a JPEG/PNG/GIF/BMP/WebP/TIFF image). ``name`` (the file, member or question) labels the errors.
    The one decoder: :func:`load_image` (files), the converter's verification, the training loader, evaluation."""
    source, name, limit = io.BytesIO(data), name or "<image bytes>", max_image_pixels()
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with Image.open(source, formats=PIL_FORMATS) as im:
            w, h = im.size
            if w * h > limit:
                raise ImageLoadError("image_too_large", f"{name}: {w}x{h} = {w * h} pixels, more than the limit "
                                                        f"{limit} (raise it with {MAX_IMAGE_PIXELS_ENV})")
            im.load()
            return to_rgb(im)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("corrupt_image", f"{name}: not a {FORMAT_NAMES} image") from None
    except Image.DecompressionBombError as e:  # PIL's own limit, when LMM_MAX_IMAGE_PIXELS is set above it
        raise ImageLoadError("image_too_large", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError("corrupt_image", f"{name}: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev


def image_format(data: bytes) -> str | None:
    """The member extension (``jpg``, ``png``, ...) of image bytes judged by their header (nothing decoded), or None
    when they are not a JPEG/PNG/GIF/BMP/WebP/TIFF image."""
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
            return FORMAT_EXT.get(im.format or "")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an image file, or :class:`ImageLoadError`: ``missing_image``; ``unreadable_image`` (not a
    regular file: a FIFO is opened non-blocking and refused, never waited on; or an OS error); ``image_too_large``
    (more bytes than an image within the pixel limit can take, refused unread)."""
    try:
        fd, size = open_regular(path)
    except FileNotFoundError:
        raise ImageLoadError("missing_image", f"no file at {path}") from None
    except OSError as e:
        raise ImageLoadError("unreadable_image", f"{path}: {e.strerror or e}") from None
    with open(fd, "rb", closefd=True) as f:
        cap = BYTES_PER_PIXEL * max_image_pixels() + HEADER_BYTES
        try:
            data = f.read(cap + 1) if size <= cap else b""
        except OSError as e:
            raise ImageLoadError("unreadable_image", f"{path}: {e.strerror or e}") from None
        if size > cap or len(data) > cap:
            raise ImageLoadError("image_too_large", f"{path}: {max(size, len(data))} bytes, more than an image "
                                                    f"within the pixel limit takes ({cap}; {MAX_IMAGE_PIXELS_ENV})")
        return data


def load_image(path: str | Path) -> Image.Image:
    """Read and fully decode an image file as RGB (:func:`read_image_file` + :func:`decode_image`), or raise
    :class:`ImageLoadError` with a short reason."""
    return decode_image(read_image_file(path), str(path))


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
