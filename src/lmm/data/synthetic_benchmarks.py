"""Synthetic benchmarks from the same scenes as the training twin, in LLaVA's ``playground/data/eval/`` layout and
the official record formats, so the official-exact scorers read them like the real files.

- ``pope/``: ``llava_pope_test.jsonl`` (question, image, category) + ``coco/coco_pope_{adversarial,popular,random}.json``
  (JSONL labels, POPE@e3e3926 format) + ``val2014/`` images. Half the questions ask about a shape that is present.
- ``gqa/``: ``llava_gqa_testdev_balanced.jsonl`` (string ids) + ``data/testdev_balanced_questions.json`` (answer,
  isBalanced, types, semantic program) + ``data/images/``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmm.data.synthetic import SHAPES, SHORT_ANSWER, make_scene, render

POPE_SPLITS = ("adversarial", "popular", "random")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_pope(root: Path, n_images: int = 24, image_size: int = 64, seed: int = 1) -> Path:
    rng = random.Random(seed)
    folder = root / "pope"
    (folder / "val2014").mkdir(parents=True, exist_ok=True)
    questions, labels, qid = [], {s: [] for s in POPE_SPLITS}, 0
    for k in range(n_images):
        scene = make_scene(rng)
        image = f"COCO_val2014_{k:012d}.jpg"
        render(scene, image_size, rng).save(folder / "val2014" / image, quality=95)
        present = [o.shape for o in scene.objects]
        absent = [s for s in SHAPES if s not in present]
        split = POPE_SPLITS[k % 3]
        for shape, label in ((rng.choice(present), "yes"), (rng.choice(absent), "no")):
            qid += 1
            text = f"Is there a {shape} in the image?"
            questions.append({"question_id": qid, "image": image, "text": text + "\n" + SHORT_ANSWER,
                              "category": split})
            labels[split].append({"question_id": qid, "image": image, "text": text, "label": label})
    _jsonl(folder / "llava_pope_test.jsonl", questions)
    for split, rows in labels.items():
        _jsonl(folder / "coco" / f"coco_pope_{split}.json", rows)
    return folder


def write_gqa(root: Path, n_images: int = 24, image_size: int = 64, seed: int = 2) -> Path:
    rng = random.Random(seed)
    folder = root / "gqa"
    (folder / "data" / "images").mkdir(parents=True, exist_ok=True)
    questions, gt = [], {}
    for k in range(n_images):
        scene = make_scene(rng)
        image = f"n{k:06d}.jpg"
        render(scene, image_size, rng).save(folder / "data" / "images" / image, quality=95)
        o = rng.choice(scene.objects)
        absent = [s for s in SHAPES if s not in {x.shape for x in scene.objects}]
        items = [(f"What color is the {o.shape}?", o.color, "query", "attr",
                  [{"operation": "select", "argument": o.shape}, {"operation": "query", "argument": "color"}]),
                 (f"Which side is the {o.shape} on?", o.side, "query", "rel",
                  [{"operation": "select", "argument": o.shape}, {"operation": "query", "argument": "hposition"}])]
        if absent:
            shape = rng.choice(absent)
            items.append((f"Is there a {shape} in the image?", "no", "verify", "obj",
                          [{"operation": "select", "argument": shape}, {"operation": "exist", "argument": "?"}]))
        for j, (q, a, structural, semantic, program) in enumerate(items):
            qid = f"{k:05d}{j}"
            questions.append({"question_id": qid, "image": image, "text": q + "\n" + SHORT_ANSWER,
                              "category": "default"})
            gt[qid] = {"imageId": image[:-4], "question": q, "answer": a, "fullAnswer": a, "isBalanced": True,
                       "types": {"structural": structural, "semantic": semantic, "detailed": semantic},
                       "semantic": program}
    _jsonl(folder / "llava_gqa_testdev_balanced.jsonl", questions)
    (folder / "data" / "testdev_balanced_questions.json").write_text(json.dumps(gt))
    return folder


def write_synthetic_benchmarks(root: str | Path, n_images: int = 24, image_size: int = 64) -> Path:
    """Write every synthetic benchmark under ``root`` (LLaVA's ``playground/data/eval``); idempotent."""
    root = Path(root)
    stamp = root / f".done-{n_images}-{image_size}"
    if not stamp.exists():
        write_pope(root, n_images, image_size)
        write_gqa(root, n_images, image_size)
        stamp.touch()
    return root
