"""Multiple-choice twins: ScienceQA (IMG questions + text-only ones), MMBench / MMBench-CN (TSV with base64
images and the circular copies as extra rows) and SEED-Bench (image dimensions). Gold option positions cycle,
so a constant letter scores exactly the uniform chance (and 0 under MMBench's CircularEval)."""

from __future__ import annotations

import dataclasses
import random

from lmm.evaluation.benchmarks.mmbench import MMBench
from lmm.evaluation.benchmarks.scienceqa import ScienceQA
from lmm.evaluation.benchmarks.seed import SEED
from lmm.synth.bench_common import (
    LETTERS,
    MULTIPLE_CHOICE,
    Build,
    has_pair,
    hex_id,
    named,
    options_text,
    place,
    ref,
    scene_where,
    unique,
    where,
)
from lmm.synth.scenes import COLORS, SHAPES, WORDS, Scene

Item = tuple[str, str, list[str]]  # question, correct option, distractors

# ------------------------------------------------------------------------------------------------ ScienceQA


def _sqa_image_item(kind: int, scene: Scene, rng: random.Random) -> tuple[Item, str]:
    """An IMG question (4 options) and its context hint ("" for none)."""
    o = rng.choice(scene.objects)
    if kind == 0:
        return (f"What color is {ref(scene, o, color=False)}?", o.color, list(COLORS)), ""
    if kind == 1:
        hint = "The picture shows flat shapes on a grey background."
        return ("How many shapes are in the picture?", str(len(scene.objects)), ["1", "2", "3", "4"]), hint
    if kind == 2:
        return (f"Which shape is {where(o)}?", o.shape, [*SHAPES, "pentagon"]), ""
    o = rng.choice(unique(scene))
    return (
        f"Where is {named(o)} in the picture?",
        where(o),
        ["on the left", "in the middle", "on the right", "at the top"],
    ), ""


def _sqa_text_item(k: int, rng: random.Random) -> tuple[Item, str]:
    shape = SHAPES[k % len(SHAPES)]
    if k % 2 == 0:
        corners = {"circle": "0", "square": "4", "triangle": "3"}[shape]
        hint = "Corners are the points where two straight sides meet."
        return (f"How many corners does a {shape} have?", corners, ["0", "3", "4", "5"]), hint
    return ("Which of these shapes can roll?", "circle", list(SHAPES)), ""


def write_scienceqa(b: Build) -> None:
    """``scienceqa/llava_test_CQM-A.json`` + ``problems.json`` + ``pid_splits.json`` + ``images/test/<id>/
    image.png``: ``n_images`` IMG questions (4 options) and ``n_images // 2`` text-only ones in between."""
    rng = b.rng()
    rows, problems, ids = [], {}, []
    n_text = b.n_images // 2
    order = [("img", k) for k in range(b.n_images)]
    for t in range(n_text):  # one text-only question after every second IMG question
        order.insert(3 * t + 2, ("text", t))
    for i, (modality, k) in enumerate(order):
        pid = str(i + 1)
        if modality == "img":
            scene = scene_where(rng, lambda s: bool(unique(s)))
            (question, correct, pool), hint = _sqa_image_item(k % 4, scene, rng)
            position = (k + k // 4) % 4  # balanced over IMG questions and over kinds
            b.save(scene, f"scienceqa/images/test/{pid}/image.png")
        else:
            (question, correct, pool), hint = _sqa_text_item(k, rng)
            position = k % len(pool)
        choices = place(correct, pool, position % len(pool), rng)
        value = (f"Context: {hint}\n" if hint else "") + question + "\n" + options_text(choices)
        row: dict = {"id": pid}
        if modality == "img":
            row["image"] = f"{pid}/image.png"
            value = "<image>\n" + value
        row["conversations"] = [
            {"from": "human", "value": value},
            {"from": "gpt", "value": LETTERS[choices.index(correct)]},
        ]
        rows.append(row)
        ids.append(pid)
        problems[pid] = {
            "question": question,
            "choices": choices,
            "answer": choices.index(correct),
            "hint": hint,
            "image": "image.png" if modality == "img" else None,
            "task": "closed choice",
            "grade": "grade2",
            "subject": "natural science",
            "topic": "geometry",
            "category": "Identify shapes",
            "skill": "Identify and count shapes",
            "lecture": "Shapes have a colour, a size and a number of "
            "corners; a circle has none, a triangle three and a square four.",
            "solution": f"The answer is {correct}.",
            "split": "test",
        }
    b.json(ScienceQA.QUESTION_FILE, rows, indent=2)
    b.json("scienceqa/problems.json", problems)
    b.json("scienceqa/pid_splits.json", {"train": [], "val": [], "test": ids, "minitest": ids})


# ------------------------------------------------------------------------------------------- MMBench (+CN)

ZH = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "left": "左边",
    "middle": "中间",
    "right": "右边",
    "yes": "是",
    "no": "否",
}
MMB_KINDS = (  # category, l2-category
    ("attribute_recognition", "finegrained_perception (instance-level)"),
    ("object_localization", "finegrained_perception (instance-level)"),
    ("spatial_relationship", "finegrained_perception (cross-instance)"),
    ("ocr", "finegrained_perception (instance-level)"),
    ("physical_property_reasoning", "attribute_reasoning"),
    ("attribute_comparison", "finegrained_perception (cross-instance)"),
)
MMB_COLUMNS = (
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
)
_MMB_ACCEPT = (
    lambda s: any(s.count(shape=o.shape) == 1 for o in s.objects),
    lambda s: bool(unique(s)),
    has_pair,
    lambda s: True,
    lambda s: "circle" in s.shapes(),
    has_pair,
)


def _mmb_item(kind: int, scene: Scene, rng: random.Random) -> tuple[tuple[str, str], str, list[str]]:
    """``((en, cn) question, correct, options)`` with English option words (translated when writing CN)."""
    if kind == 0:
        o = rng.choice([o for o in scene.objects if scene.count(shape=o.shape) == 1])
        return ((f"What color is the {o.shape}?", f"图中{ZH[o.shape]}是什么颜色？"), o.color, list(COLORS))
    if kind == 1:
        o = rng.choice(unique(scene))
        return (
            (f"Where is {named(o)} in the image?", f"{ZH[o.color]}{ZH[o.shape]}在图中的什么位置？"),
            o.side,
            ["left", "middle", "right"],
        )
    if kind == 2:
        a, c = rng.sample(unique(scene), 2)
        side = "left" if a.column < c.column else "right"
        return (
            (
                f"Is {named(a)} to the left or to the right of {named(c)}?",
                f"{ZH[a.color]}{ZH[a.shape]}在{ZH[c.color]}{ZH[c.shape]}的左边还是右边？",
            ),
            side,
            ["left", "right"],
        )
    if kind == 3:
        return (
            ("What word is written in the image?", "图中写的是什么单词？"),
            scene.text,
            [scene.text, *rng.sample([w for w in WORDS if w != scene.text], 3)],
        )
    if kind == 4:
        return (
            ("Which shape could roll away if the table were tilted?", "如果桌子倾斜，哪个形状可能会滚走？"),
            "circle",
            list(SHAPES),
        )
    a, c = rng.sample(unique(scene), 2)
    return (
        (
            f"Do {named(a)} and {named(c)} have the same color?",
            f"{ZH[a.color]}{ZH[a.shape]}和{ZH[c.color]}{ZH[c.shape]}的颜色相同吗？",
        ),
        "yes" if a.color == c.color else "no",
        ["yes", "no"],
    )


def _write_mmbench(b: Build, lang: str, rel: str) -> None:
    rng = dataclasses.replace(b, name="mmbench").rng()  # EN and CN share scenes, as the real dev sets do
    hint = {
        "en": "The image shows simple shapes on a grey background.",
        "cn": "图中是灰色背景上的简单形状。",
    }[lang]
    main, copies = [], []
    for i in range(b.n_images):
        kind = i % len(MMB_KINDS)
        scene = scene_where(rng, _MMB_ACCEPT[kind], text=kind == 3)
        question, correct, pool = _mmb_item(kind, scene, rng)
        options = place(correct, pool, (i // len(MMB_KINDS)) % len(pool), rng)
        shown = [ZH.get(o, o) if lang == "cn" else o for o in options]
        image = b.b64(scene)
        answer = options.index(correct)
        category, l2 = MMB_KINDS[kind]
        for k in range(
            len(shown)
        ):  # k = 0: the question; k > 0: CircularEval copies, options rotated k places
            rotated = [shown[(j - k) % len(shown)] for j in range(len(shown))]
            row = {
                "index": k * 1_000_000 + i,
                "question": question[lang == "cn"],
                "hint": hint if i % 3 else None,
                "answer": LETTERS[(answer + k) % len(shown)],
                "category": category,
                "image": image,
                "source": "synthetic",
                "l2-category": l2,
                "comment": None,
                "split": "dev",
            }
            row.update(zip(LETTERS, rotated))
            (copies if k else main).append(row)
    b.tsv(rel, MMB_COLUMNS, main + copies)


def write_mmbench(b: Build) -> None:
    """``mmbench/mmbench_dev_20230712.tsv``: questions with 2-4 options, then their circular copies
    (index ``k·1e6 + i``)."""
    _write_mmbench(b, "en", MMBench.TSV_FILES["en"][0])


def write_mmbench_cn(b: Build) -> None:
    """``mmbench_cn/mmbench_dev_cn_20231003.tsv``: the same questions and images in Chinese."""
    _write_mmbench(b, "cn", MMBench.TSV_FILES["cn"][0])


# ---------------------------------------------------------------------------------------------------- SEED

SEED_TYPES = {
    "Scene Understanding": 1,
    "Instance Identity": 2,
    "Instance Attributes": 3,
    "Instance Location": 4,
    "Instances Counting": 5,
    "Spatial Relation": 6,
    "Instance Interaction": 7,
    "Visual Reasoning": 8,
    "Text Understanding": 9,
    "Action Recognition": 10,
    "Action Prediction": 11,
    "Procedure Understanding": 12,
}
SEED_USED = (
    "Scene Understanding",
    "Instance Identity",
    "Instance Attributes",
    "Instance Location",
    "Instances Counting",
    "Spatial Relation",
    "Visual Reasoning",
    "Text Understanding",
)


def _seed_item(kind: str, scene: Scene, rng: random.Random) -> Item:
    o = rng.choice(scene.objects)
    if kind == "Scene Understanding":
        return (
            "What does the background of the image look like?",
            "plain light grey",
            ["plain light grey", "a green lawn", "a blue sky", "a wooden floor"],
        )
    if kind == "Instance Identity":
        return f"Which shape is {where(o)} of the image?", o.shape, [*SHAPES, "pentagon"]
    if kind == "Instance Attributes":
        return f"What color is {ref(scene, o, color=False)}?", o.color, list(COLORS)
    if kind == "Instance Location":
        o = rng.choice(unique(scene))
        return (
            f"Where is {named(o)} located in the image?",
            where(o),
            ["on the left", "in the middle", "on the right", "at the top"],
        )
    if kind == "Instances Counting":
        return "How many shapes are there in the image?", str(len(scene.objects)), ["1", "2", "3", "4"]
    if kind == "Spatial Relation":
        a, c = rng.sample(unique(scene), 2)
        side = "to the left of it" if a.column < c.column else "to the right of it"
        return (
            f"Where is {named(a)} relative to {named(c)}?",
            side,
            ["to the left of it", "to the right of it", "above it", "below it"],
        )
    if kind == "Visual Reasoning":
        return (
            "Which shape could roll away if the table were tilted?",
            "circle" if "circle" in scene.shapes() else "none of them",
            [*SHAPES, "none of them"],
        )
    return (
        "What word is written in the image?",
        scene.text,
        [scene.text, *rng.sample([w for w in WORDS if w != scene.text], 3)],
    )


def write_seed(b: Build) -> None:
    """``seed_bench/llava-seed-bench.jsonl`` + ``SEED-Bench.json`` (v1 format) + ``SEED-Bench-image/``: one
    4-option question per image over eight of SEED's nine image dimensions (Instance Interaction needs
    agents); the video dimensions are left out (a still frame cannot show the motion they ask about)."""
    rng = b.rng()
    rows, questions = [], []
    for k in range(b.n_images):
        kind = SEED_USED[k % len(SEED_USED)]
        accept = {"Instance Location": lambda s: bool(unique(s)), "Spatial Relation": has_pair}.get(
            kind, lambda s: True
        )
        scene = scene_where(rng, accept, text=kind == "Text Understanding")
        question, correct, pool = _seed_item(kind, scene, rng)
        choices = place(correct, pool, (k + k // len(SEED_USED)) % 4, rng)
        data_id = f"{3000000 + 29 * k}_{hex_id(rng, 8)}"
        image = f"SEED-Bench-image/{data_id}.jpg"
        b.save(scene, f"seed_bench/{image}")
        qid = str(100000 + k)
        rows.append(
            {
                "question_id": qid,
                "image": image,
                "category": kind,
                "text": question + "\n" + options_text(choices) + MULTIPLE_CHOICE,
            }
        )
        questions.append(
            {
                "answer": LETTERS[choices.index(correct)],
                **{f"choice_{c}": text for c, text in zip("abcd", choices)},
                "data_id": data_id,
                "data_type": "image",
                "question": question,
                "question_id": qid,
                "question_type_id": SEED_TYPES[kind],
            }
        )
    b.jsonl(SEED.QUESTION_FILE, rows)
    b.json(SEED.GT_FILE, {"questions": questions, "question_type": SEED_TYPES})
