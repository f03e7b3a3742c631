"""Procedural scenes with their description kept as ground truth: coloured shapes (shape, colour, size, position,
count) and optional rendered text, drawn at any resolution. Every question a synthetic source or benchmark asks is
answered from the scene, so the answer is derivable from the pixels. Deterministic under a ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
WORDS = ("STOP", "OPEN", "CAFE", "BOOK", "SALE", "EXIT", "PARK", "TAXI")
POSITIONS = ("left", "middle", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    cx: float  # centre, as a fraction of the canvas width / height
    cy: float
    r: float  # half-extent, as a fraction of the shorter side
    column: int = 0  # 0, 1, 2: left, middle, right third of the image

    @property
    def side(self) -> str:
        return POSITIONS[self.column]

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"

    def box(self, w: int, h: int) -> tuple[float, float, float, float]:
        """Pixel box ``(x1, y1, x2, y2)`` on a ``w × h`` canvas."""
        rr = self.r * min(w, h)
        return (self.cx * w - rr, self.cy * h - rr, self.cx * w + rr, self.cy * h + rr)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: tuple[int, int, int]
    aspect: float = 1.0  # width / height
    text: str | None = None  # a word rendered in the top band (OCR-style questions)
    text_color: str = "blue"
    meta: dict = field(default_factory=dict, compare=False)

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return sum(1 for o in self.objects if (shape is None or o.shape == shape) and (color is None or o.color == color))

    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def caption(self) -> str:
        parts = [f"{o.phrase()} {'in the middle' if o.side == 'middle' else 'on the ' + o.side}"
                 for o in self.objects]
        text = " and ".join(parts)
        if self.text:
            text += f', under the word "{self.text}"'
        return text[0].upper() + text[1:] + "."

    def canvas(self, size: int) -> tuple[int, int]:
        """(w, h) with the longer side ``size``."""
        return (size, max(8, round(size / self.aspect))) if self.aspect >= 1 else (max(8, round(size * self.aspect)), size)

    def norm_box(self, obj: Obj, size: int = 336) -> list[float]:
        """LLaVA's region box: ``[x1, y1, x2, y2]`` normalised to the image padded to a square (expand2square),
        2 decimals, trailing zeros dropped (``round``)."""
        w, h = self.canvas(size)
        side = max(w, h)
        ox, oy = (side - w) / 2, (side - h) / 2
        x1, y1, x2, y2 = obj.box(w, h)
        return [round(min(max((v + o) / side, 0.0), 1.0), 2) for v, o in ((x1, ox), (y1, oy), (x2, ox), (y2, oy))]


def make_scene(rng: random.Random, max_objects: int = 3, text_prob: float = 0.0, aspects=(1.0,)) -> Scene:
    """Up to ``max_objects`` (≤ 3) shapes, one per column (left / middle / right), so positions are unambiguous."""
    n = rng.randint(1, min(max_objects, 3))
    columns = sorted(rng.sample(range(3), n))
    objs = []
    for col in columns:
        size = rng.choice(SIZES)
        r = rng.uniform(0.09, 0.11) if size == "small" else rng.uniform(0.14, 0.17)
        cx = (col + 0.5) / 3 + rng.uniform(-0.03, 0.03)
        cy = rng.uniform(0.55, 0.7)
        objs.append(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), size, cx, cy, r, col))
    grey = rng.randint(200, 245)
    text = rng.choice(WORDS) if rng.random() < text_prob else None
    return Scene(tuple(objs), (grey, grey, grey), rng.choice(aspects), text, rng.choice(list(COLORS)))


@lru_cache(maxsize=16)
def _font(px: int):
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def render(scene: Scene, size: int = 336) -> Image.Image:
    """Draw the scene; the longer side is ``size`` pixels."""
    w, h = scene.canvas(size)
    img = Image.new("RGB", (w, h), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x1, y1, x2, y2 = o.box(w, h)
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((x1, y1, x2, y2), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x1, y1, x2, y2), fill=fill)
        else:
            draw.polygon([((x1 + x2) / 2, y1), (x1, y2), (x2, y2)], fill=fill)
    if scene.text:
        font = _font(max(8, int(min(w, h) * 0.2)))
        box = draw.textbbox((0, 0), scene.text, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        draw.text(((w - tw) / 2 - box[0], h * 0.22 - th / 2 - box[1]), scene.text, fill=COLORS[scene.text_color],
                  font=font)
    return img


def attribute_targets(scene: Scene) -> list[float]:
    """The scene's attributes as a multi-hot vector (the tiny vision twin's pretraining target): which shapes,
    colours and columns occur, how many objects, which (column, shape, colour, size) objects, which word in which
    colour. Its length is ``len(attribute_targets(any_scene))``, fixed."""
    y = [float(s in scene.shapes()) for s in SHAPES]
    y += [float(scene.count(color=c) > 0) for c in COLORS]
    y += [float(len(scene.objects) == n) for n in (1, 2, 3)]
    at = {o.column: o for o in scene.objects}
    for col in range(len(POSITIONS)):
        o = at.get(col)
        y += [float(o is not None and o.shape == s) for s in SHAPES]
        y += [float(o is not None and o.color == c) for c in COLORS]
        y += [float(o is not None and o.size == z) for z in SIZES]
    y += [float(scene.text == w) for w in WORDS]
    y += [float(scene.text is not None and scene.text_color == c) for c in COLORS]
    return y
