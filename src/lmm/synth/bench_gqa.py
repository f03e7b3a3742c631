"""GQA twin: testdev-balanced questions in LLaVA's question JSONL and the official GT file with the answer,
the balanced flag, the question types and the semantic program that the official ``eval.py`` reads."""

from __future__ import annotations

import random

from lmm.evaluation.benchmarks.gqa import GQA
from lmm.synth.bench_common import (
    SHORT_ANSWER,
    Build,
    absent_shapes,
    has_pair,
    named,
    ref,
    scene_where,
    unique,
    where,
)
from lmm.synth.scenes import Scene

GQA_OPEN = ("color", "side", "shape")
GQA_BINARY = ("verify", "logical", "compare", "choose")


def _op(operation: str, argument: str, *dependencies: int) -> dict:
    return {"operation": operation, "dependencies": list(dependencies), "argument": argument}


def _gqa_accept(open_kind: str, binary: str, yes: bool):
    def accept(scene: Scene) -> bool:
        n_shapes = len(scene.shapes())
        if open_kind == "side" and not unique(scene):
            return False
        if binary == "verify" and not yes and n_shapes == 3:
            return False
        if binary == "logical" and (n_shapes < 2 if yes else n_shapes == 3):
            return False
        if binary in ("compare", "choose") and not has_pair(scene):
            return False
        if binary == "compare":
            colors = [o.color for o in unique(scene)]
            return len(set(colors)) < len(colors) if yes else len(set(colors)) > 1
        return True

    return accept


def _gqa_open(kind: str, scene: Scene, rng: random.Random):
    if kind == "color":
        o = rng.choice(scene.objects)
        name = ref(scene, o, color=False)
        return (
            f"What color is {name}?",
            o.color,
            f"The {name[4:]} is {o.color}.",
            "attr",
            "queryAttr",
            [_op("select", f"{o.shape} (1)"), _op("query", "color", 0)],
        )
    if kind == "side":
        o = rng.choice(unique(scene))
        return (
            f"Which side is {named(o)} on?",
            o.side,
            f"The {o.color} {o.shape} is {where(o)}.",
            "attr",
            "positionQuery",
            [_op("select", f"{o.shape} (1)"), _op("filter color", o.color, 0), _op("query", "hposition", 1)],
        )
    o = rng.choice(scene.objects)
    return (
        f"What shape is {where(o)}?",
        o.shape,
        f"The shape {where(o)} is a {o.shape}.",
        "cat",
        "categoryThis",
        [_op("select", "shape (1)"), _op("filter hposition", o.side, 0), _op("query", "name", 1)],
    )


def _gqa_binary(kind: str, scene: Scene, rng: random.Random, yes: bool):
    present = sorted(scene.shapes())
    if kind == "verify":
        shape = rng.choice(present if yes else absent_shapes(scene))
        full = f"Yes, there is a {shape}." if yes else f"No, there are no {shape}s."
        return (
            f"Is there a {shape} in the image?",
            "yes" if yes else "no",
            full,
            "verify",
            "obj",
            "exist",
            [_op("select", f"{shape} (1)"), _op("exist", "?", 0)],
        )
    if kind == "logical":
        first, second = (
            rng.sample(present, 2) if yes else (rng.choice(present), rng.choice(absent_shapes(scene)))
        )
        if rng.random() < 0.5:
            first, second = second, first
        missing = next((s for s in (first, second) if s not in present), None)
        full = f"Yes, there are both a {first} and a {second}." if yes else f"No, there is no {missing}."
        return (
            f"Are there both a {first} and a {second} in the image?",
            "yes" if yes else "no",
            full,
            "logical",
            "obj",
            "existAndC",
            [
                _op("select", f"{first} (1)"),
                _op("exist", "?", 0),
                _op("select", f"{second} (2)"),
                _op("exist", "?", 2),
                _op("and", "", 1, 3),
            ],
        )
    if kind == "compare":
        objs = unique(scene)
        pairs = [(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :] if (a.color == b.color) == yes]
        a, b = rng.choice(pairs)
        full = "Yes, both are the same color." if yes else "No, they have different colors."
        return (
            f"Do {named(a)} and {named(b)} have the same color?",
            "yes" if yes else "no",
            full,
            "compare",
            "attr",
            "sameColor",
            [_op("select", f"{a.shape} (1)"), _op("select", f"{b.shape} (2)"), _op("same color", "", 0, 1)],
        )
    a, b = rng.sample(unique(scene), 2)
    side = "left" if a.column < b.column else "right"
    return (
        f"Is {named(a)} to the left or to the right of {named(b)}?",
        side,
        f"The {a.color} {a.shape} is to the {side} of the {b.color} {b.shape}.",
        "choose",
        "rel",
        "chooseRel",
        [
            _op("select", f"{b.shape} (2)"),
            _op("choose rel", f"{a.shape},to the left of|to the right of,s (1)", 0),
        ],
    )


def write_gqa(b: Build) -> None:
    """``llava_gqa_testdev_balanced.jsonl`` + ``data/testdev_balanced_questions.json`` + ``data/images/``.
    Per image one open query (colour / side / shape) and one binary question (verify / logical / compare,
    yes and no alternating; choose, left or right)."""
    rng = b.rng()
    questions, gt = [], {}
    for k in range(b.n_images):
        open_kind, binary = GQA_OPEN[k % 3], GQA_BINARY[k % 4]
        yes = (k // 4) % 2 == 0
        scene = scene_where(rng, _gqa_accept(open_kind, binary, yes))
        image_id = f"n{300000 + 7 * k}"
        b.save(scene, f"gqa/data/images/{image_id}.jpg")
        q_open = _gqa_open(open_kind, scene, rng)
        q_binary = _gqa_binary(binary, scene, rng, yes)
        items = [(q_open[:3], "query", *q_open[3:]), (q_binary[:3], *q_binary[3:])]
        for j, ((question, answer, full), structural, semantic, detailed, program) in enumerate(items):
            qid = str(201000000 + 10 * k + j)
            questions.append(
                {
                    "question_id": qid,
                    "image": f"{image_id}.jpg",
                    "text": question + SHORT_ANSWER,
                    "category": "default",
                }
            )
            gt[qid] = {
                "semantic": program,
                "entailed": [],
                "equivalent": [qid],
                "question": question,
                "imageId": image_id,
                "isBalanced": True,
                "groups": {"global": None, "local": f"{k}{detailed}"},
                "answer": answer,
                "semanticStr": " ".join(f"{op['operation']}: {op['argument']}" for op in program),
                "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                "types": {"detailed": detailed, "semantic": semantic, "structural": structural},
                "fullAnswer": full,
            }
    b.jsonl(GQA.QUESTION_FILE, questions)
    b.json(GQA.GT_FILES[0], gt)


def gqa_qa_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Question–answer pairs of the GQA twin's kinds that ``scene`` supports (the training twin's GQA source draws
    from the same question generator, as GQA's train and testdev splits share theirs)."""
    pairs = []
    kinds = [k for k in GQA_OPEN if _gqa_accept(k, "query", True)(scene)]
    if kinds:
        pairs.append(_gqa_open(rng.choice(kinds), scene, rng)[:2])
    options = [(b, yes) for b in GQA_BINARY for yes in (True, False) if _gqa_accept("color", b, yes)(scene)]
    if options:
        binary, yes = rng.choice(options)
        pairs.append(_gqa_binary(binary, scene, rng, yes)[:2])
    rng.shuffle(pairs)
    return pairs
