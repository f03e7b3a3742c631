"""Yes/no twins: POPE (object presence with POPE's three negative-sampling strategies) and MME (one yes and
one no question per image, perception and cognition tasks, ground truth in the official release layout)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from lmm.evaluation.benchmarks.mme import MME
from lmm.evaluation.benchmarks.pope import POPE
from lmm.synth.bench_common import (
    MME_YES_NO,
    NUMBER_NAMES,
    SHORT_ANSWER,
    Build,
    absent_shapes,
    has_pair,
    named,
    ref,
    scene_where,
    unique,
)
from lmm.synth.scenes import COLORS, SHAPES, WORDS, Scene

# ---------------------------------------------------------------------------------------------------- POPE

POPE_SPLITS = ("adversarial", "popular", "random")


def pope_negatives(scenes: list[Scene], rng: random.Random) -> dict[str, list[str]]:
    """One absent shape per scene and strategy, as POPE samples negatives: ``random`` = any absent shape,
    ``popular`` = the absent shape present in the most images, ``adversarial`` = the absent shape that
    co-occurs most often with the image's shapes (ties broken in ``SHAPES`` order)."""
    frequency = Counter(shape for scene in scenes for shape in scene.shapes())
    cooccur = Counter((a, b) for scene in scenes for a in scene.shapes() for b in scene.shapes() if a != b)
    negatives: dict[str, list[str]] = {split: [] for split in POPE_SPLITS}
    for scene in scenes:
        absent = absent_shapes(scene)
        negatives["random"].append(rng.choice(absent))
        negatives["popular"].append(max(absent, key=lambda s: (frequency[s], -SHAPES.index(s))))
        negatives["adversarial"].append(
            max(absent, key=lambda s: (sum(cooccur[(p, s)] for p in scene.shapes()), -SHAPES.index(s)))
        )
    return negatives


def write_pope(b: Build) -> None:
    """``llava_pope_test.jsonl`` (global ids, ``category`` = split) + ``coco/coco_pope_{split}.json`` (JSONL
    labels, ids restarting at 1 per split) + ``val2014/``. Every split asks about every image: the same
    present shape (yes), then a split-specific absent shape (no), so each split is exactly balanced."""
    rng = b.rng()
    scenes = [scene_where(rng, lambda s: bool(absent_shapes(s))) for _ in range(b.n_images)]
    images = [f"COCO_val2014_{500000 + 17 * k:012d}.jpg" for k in range(b.n_images)]
    for scene, image in zip(scenes, images):
        b.save(scene, f"pope/val2014/{image}")
    positives = [rng.choice(sorted(scene.shapes())) for scene in scenes]
    negatives = pope_negatives(scenes, rng)
    questions, qid = [], 0
    for split in POPE_SPLITS:
        labels = []
        for image, positive, negative in zip(images, positives, negatives[split]):
            for shape, label in ((positive, "yes"), (negative, "no")):
                qid += 1
                text = f"Is there a {shape} in the image?"
                questions.append(
                    {"question_id": qid, "image": image, "text": text + SHORT_ANSWER, "category": split}
                )
                labels.append({"question_id": len(labels) + 1, "image": image, "text": text, "label": label})
        b.jsonl(f"{POPE.LABEL_DIR}/coco_pope_{split}.json", labels)
    b.jsonl(POPE.QUESTION_FILE, questions)


# ----------------------------------------------------------------------------------------------------- MME

ZH = {
    "STOP": "停止",
    "OPEN": "营业中",
    "CAFE": "咖啡馆",
    "BOOK": "书",
    "SALE": "促销",
    "EXIT": "出口",
    "PARK": "公园",
    "TAXI": "出租车",
}
Pair = tuple[Scene, str, str]  # scene, yes question, no question (without the yes/no instruction)


def _other(options, value, rng: random.Random):
    return rng.choice([o for o in options if o != value])


def _text_scene(rng: random.Random, text: str) -> Scene:
    grey = rng.randint(200, 245)
    return Scene((), (grey, grey, grey), 1.0, text, rng.choice(list(COLORS)))


def _existence(rng: random.Random) -> Pair:
    scene = scene_where(rng, lambda s: bool(absent_shapes(s)))
    return (
        scene,
        f"Is there a {rng.choice(sorted(scene.shapes()))} in this image?",
        f"Is there a {rng.choice(absent_shapes(scene))} in this image?",
    )


def _count(rng: random.Random) -> Pair:
    scene = scene_where(rng)
    n = len(scene.objects)
    question = "Is there {} shape in this image?", "Are there {} shapes in this image?"
    wrong = _other(range(1, 5), n, rng)
    return (scene, question[n > 1].format(NUMBER_NAMES[n]), question[wrong > 1].format(NUMBER_NAMES[wrong]))


def _position(rng: random.Random) -> Pair:
    scene = scene_where(rng, has_pair)
    a, b = rng.sample(unique(scene), 2)
    side, wrong = ("left", "right") if a.column < b.column else ("right", "left")
    return (
        scene,
        f"Is {named(a)} on the {side} side of {named(b)}?",
        f"Is {named(a)} on the {wrong} side of {named(b)}?",
    )


def _color(rng: random.Random) -> Pair:
    scene = scene_where(rng)
    o = rng.choice(scene.objects)
    missing = [c for c in COLORS if not scene.count(shape=o.shape, color=c)]
    return (
        scene,
        f"Is there a {o.color} {o.shape} in this image?",
        f"Is there a {rng.choice(missing)} {o.shape} in this image?",
    )


def _ocr(rng: random.Random) -> Pair:
    scene = scene_where(rng, text=True)
    return (
        scene,
        f'Is the word in the image "{scene.text}"?',
        f'Is the word in the image "{_other(WORDS, scene.text, rng)}"?',
    )


def _posters(rng: random.Random) -> Pair:
    scene = scene_where(rng, text=True)
    title = 'Is this poster titled "{}"?'
    return scene, title.format(scene.text), title.format(_other(WORDS, scene.text, rng))


def _commonsense(rng: random.Random) -> Pair:
    scene = scene_where(rng, lambda s: "circle" in s.shapes() and len(s.shapes()) > 1)
    roller = rng.choice([o for o in scene.objects if o.shape == "circle"])
    corner = rng.choice([o for o in scene.objects if o.shape != "circle"])
    question = "Could {} roll away if the table were tilted?"
    return scene, question.format(ref(scene, roller)), question.format(ref(scene, corner))


def _numerical(rng: random.Random) -> Pair:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op, value = ("+", a + b) if rng.random() < 0.5 else ("-", max(a, b) - min(a, b))
    scene = _text_scene(rng, f"{max(a, b)}{op}{min(a, b)}=")
    question = "Is the answer to the arithmetic question in the image {}?"
    return scene, question.format(value), question.format(value + rng.choice((1, 2, 3)))


def _translation(rng: random.Random) -> Pair:
    word = rng.choice(WORDS)
    question = "Is it appropriate to translate the English in the image into Chinese '{}' in the picture?"
    return _text_scene(rng, word), question.format(ZH[word]), question.format(ZH[_other(WORDS, word, rng)])


def _code(rng: random.Random) -> Pair:
    op = rng.choice(("**", "//", "%"))
    a, b = (rng.randint(2, 3), rng.randint(2, 3)) if op == "**" else (rng.randint(5, 9), rng.randint(2, 4))
    value = {"**": a**b, "//": a // b, "%": a % b}[op]
    question = "The image shows a python code. Is the output of the code '{}'?"
    wrong = value + rng.choice((1, 2, 3))
    return _text_scene(rng, f"{a}{op}{b}"), question.format(value), question.format(wrong)


# task -> (question generator, image name pattern, keeps images in images/ + questions_answers_YN/)
MME_TASKS: dict[str, tuple[Callable[[random.Random], Pair], str, bool]] = {
    "existence": (_existence, "{:012d}.jpg", False),
    "count": (_count, "{:012d}.jpg", False),
    "position": (_position, "{:012d}.jpg", False),
    "color": (_color, "{:012d}.jpg", False),
    "OCR": (_ocr, "{:04d}.jpg", False),
    "posters": (_posters, "tt{:07d}.jpg", True),
    "commonsense_reasoning": (_commonsense, "{:04d}.png", False),
    "numerical_calculation": (_numerical, "{:04d}.png", False),
    "text_translation": (_translation, "{:04d}.png", False),
    "code_reasoning": (_code, "{:04d}.png", False),
}


def write_mme(b: Build) -> None:
    """``MME/llava_mme.jsonl`` (``question_id`` = ``<task>/[images/]<image>``, two rows per image) and the
    release folder ``MME/MME_Benchmark_release_version/<task>/`` with each image next to its ``.txt`` of
    ``question<TAB>Yes|No`` lines (``images/`` + ``questions_answers_YN/`` for ``posters``). Per task
    ``max(2, n_images // 4)`` images. Perception: existence, count, position, color, OCR, posters; cognition:
    all four (celebrity, scene, landmark and artwork need real-world entities and are left out)."""
    release = "MME/MME_Benchmark_release_version"
    rows = []
    for t, (task, (make, pattern, nested)) in enumerate(MME_TASKS.items()):
        rng = b.rng(task)
        for k in range(max(2, b.n_images // 4)):
            scene, yes_question, no_question = make(rng)
            image = pattern.format(1000 * t + 37 * k + 1)
            rel = f"{task}/images/{image}" if nested else f"{task}/{image}"
            b.save(scene, f"{release}/{rel}")
            txt = f"{task}/questions_answers_YN/" if nested else f"{task}/"
            txt += image.rsplit(".", 1)[0] + ".txt"
            b.text(f"{release}/{txt}", f"{yes_question}{MME_YES_NO}\tYes\n{no_question}{MME_YES_NO}\tNo\n")
            for question in (yes_question, no_question):
                rows.append(
                    {"question_id": rel, "image": rel, "text": question + SHORT_ANSWER, "category": task}
                )
    b.jsonl(MME.QUESTION_FILE, rows)
