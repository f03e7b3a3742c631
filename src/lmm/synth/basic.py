"""The small test world (``data=synthetic_shards``): one or two shapes (colours and words of
:mod:`lmm.synth.scenes`), written as LLaVA-format JSON + images with short ids (``cap-``, ``vqa-``, ``conv-``,
``text-``) for the ``synthetic`` rules. Its text is part of the tiny tokenizer's corpus, so its scene maker stays
as it is: a change would change the tokenizer, and with it every pretrained twin.

Every answer is derivable from the pixels, so a tiny model can learn it. Stage 1 gets LCS-558K-like captions;
stage 2 gets a 665K-like mixture: multi-turn short-answer VQA with LLaVA's response-format prompt, free-form
conversations, and text-only (ShareGPT-like) samples. Deterministic under a seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from lmm.synth.scenes import COLORS, NUMBER_WORDS, SHAPES
from lmm.text.prompts import OPTION_LETTER, SHORT_ANSWER
from lmm.text.templates import TEMPLATES

SIDES = ("left", "right")
CAPTION_PROMPTS = ("Describe the image concisely.", "Give a brief description of the picture.",
                   "Summarize the visual content of the image.", "Write a short caption for the photo.")
RENDER_VERSION = 2  # part of the cache key: bump when rendering or text generation changes


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    side: str

    def phrase(self) -> str:
        return f"a {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: tuple[int, int, int]

    def caption(self) -> str:
        parts = [f"{o.phrase()} on the {o.side}" for o in self.objects]
        return (" and ".join(parts)).capitalize() + "."


def make_scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 2))
    sides = rng.sample(SIDES, n)
    shapes = rng.sample(SHAPES, n)
    objs = tuple(Obj(shapes[k], rng.choice(list(COLORS)), sides[k]) for k in range(n))
    grey = rng.randint(200, 250)
    return Scene(objs, (grey, grey, grey))


def render(scene: Scene, size: int = 64, rng: random.Random | None = None) -> Image.Image:
    rng = rng or random.Random(0)
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        half = size // 2
        r = int(size * rng.uniform(0.17, 0.23))
        cx = (half // 2 if o.side == "left" else half + half // 2) + rng.randint(-size // 32, size // 32)
        cy = half + rng.randint(-size // 10, size // 10)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def vqa_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Short-answer questions about a scene, with their answers (VQAv2 / GQA style)."""
    o = rng.choice(scene.objects)
    absent = [s for s in SHAPES if s not in {x.shape for x in scene.objects}]
    pairs = [
        (f"What color is the {o.shape}?", o.color),
        (f"Which side is the {o.shape} on?", o.side),
        ("How many shapes are there?", str(len(scene.objects))),
        (f"Is there a {o.shape} in the image?", "Yes"),
    ]
    if absent:
        pairs.append((f"Is there a {rng.choice(absent)} in the image?", "No"))
    rng.shuffle(pairs)
    return pairs[: rng.randint(2, 4)]


def text_only_pair(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 5), rng.randint(0, 4)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    return f"Spell the number {a} as a word.", f"The number {a} is written as {NUMBER_WORDS[a]}."


def _record(sid: str, image: str | None, turns: list[tuple[str, str]]) -> dict:
    conv = []
    for k, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if (k == 0 and image) else q})
        conv.append({"from": "gpt", "value": a})
    rec = {"id": sid, "conversations": conv}
    if image:
        rec["image"] = image
    return rec


def write_synthetic(root: str | Path, n_pretrain: int = 256, n_finetune: int = 256, text_only_share: float = 0.15,
                    image_size: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write ``pretrain.json``, ``finetune.json`` and ``images/`` under ``root`` (skipped when already there)."""
    root = Path(root)
    stamp = root / f".done-v{RENDER_VERSION}-{n_pretrain}-{n_finetune}-{text_only_share}-{image_size}-{seed}"
    paths = {"pretrain": root / "pretrain.json", "finetune": root / "finetune.json", "images": root / "images"}
    if stamp.exists():
        return paths
    for other in root.glob(".done-*"):
        other.unlink()
    rng = random.Random(seed)
    paths["images"].mkdir(parents=True, exist_ok=True)

    def new_image(tag: str, k: int) -> tuple[str, Scene]:
        scene = make_scene(rng)
        rel = f"{tag}/{k:06d}.png"
        (paths["images"] / tag).mkdir(exist_ok=True)
        render(scene, image_size, rng).save(paths["images"] / rel)
        return rel, scene

    pretrain = []
    for k in range(n_pretrain):
        rel, scene = new_image("cap", k)
        prompt = rng.choice(CAPTION_PROMPTS)
        pretrain.append(_record(f"cap-{k}", rel, [(prompt, scene.caption())]))
    finetune = []
    for k in range(n_finetune):
        if rng.random() < text_only_share:
            finetune.append(_record(f"text-{k}", None, [text_only_pair(rng) for _ in range(rng.randint(1, 2))]))
            continue
        rel, scene = new_image("inst", k)
        if rng.random() < 0.7:
            turns = [(q + "\n" + SHORT_ANSWER, a) for q, a in vqa_pairs(scene, rng)]
            finetune.append(_record(f"vqa-{k}", rel, turns))
        else:
            finetune.append(_record(f"conv-{k}", rel, [("What is in the image?", "There is " +
                                                        scene.caption()[0].lower() + scene.caption()[1:])]))
    paths["pretrain"].write_text(json.dumps(pretrain, indent=1))
    paths["finetune"].write_text(json.dumps(finetune, indent=1))
    stamp.touch()
    return paths


def tokenizer_corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Text the tiny tokenizer is trained on: templates, prompts and the synthetic language."""
    rng = random.Random(seed)
    lines = [t.system for t in TEMPLATES.values() if t.system]
    lines += [SHORT_ANSWER, OPTION_LETTER,
              "USER: ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>>", *CAPTION_PROMPTS, "What is in the image? There is"]
    for _ in range(n):
        scene = make_scene(rng)
        lines.append(scene.caption())
        lines += [f"{q} {a}" for q, a in vqa_pairs(scene, rng)]
        lines.append(" ".join(text_only_pair(rng)))
    return lines
