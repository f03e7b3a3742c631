"""Judge-scored twins: LLaVA-Bench-in-the-Wild (questions, captions as judge context, reference answers)
and MM-Vet (questions, ground truth with ``<AND>`` / ``<OR>``, capabilities), in the files the official judge
scripts read."""

from __future__ import annotations

import random

from lmm.evaluation.benchmarks.llava_wild import LLaVAWild
from lmm.evaluation.benchmarks.mmvet import MMVet
from lmm.synth.bench_common import (
    CORNERS,
    NUMBER_NAMES,
    Build,
    hex_id,
    named,
    ref,
    scene_where,
    unique,
    where,
)
from lmm.synth.scenes import Scene


def _description(scene: Scene) -> str:
    n = len(scene.objects)
    sizes = ", ".join(f"the {o.shape} {where(o)} is {o.size}" for o in scene.objects)
    return (
        f"{scene.caption()} There {'is' if n == 1 else 'are'} {NUMBER_NAMES[n]} shape{'s' * (n > 1)} on a "
        f"plain grey background; {sizes}."
    )


def _rolling(scene: Scene) -> str:
    circles = [o for o in scene.objects if o.shape == "circle"]
    others = [o for o in scene.objects if o.shape != "circle"]
    if not circles:
        return (
            "None of them would roll away: every shape in the image has straight sides and corners, so "
            "tilting the table would at most make them slide."
        )
    text = " and ".join(ref(scene, o) for o in circles)
    text = f"{text[0].upper()}{text[1:]} could roll away, because a circle has no corners."
    if others:
        text += (
            " " + " and ".join(f"{ref(scene, o)} ({CORNERS[o.shape]} corners)" for o in others).capitalize()
        )
        text += " would not roll, because flat sides keep them in place."
    return text


def write_llava_wild(b: Build) -> None:
    """``llava-bench-in-the-wild/``: ``questions.jsonl`` (conv / detail / complex), ``context.jsonl`` (the
    judge's caption context), ``answers_gpt4.jsonl`` (reference answers, the judge's Assistant 1) and
    ``images/``. Per image a conversation question, then a detailed description (even images) or a reasoning
    question (odd images)."""
    rng = b.rng()
    questions, contexts, answers = [], [], []
    for k in range(b.n_images):
        scene = scene_where(rng)
        image = f"{k + 1:03d}.jpg"
        b.save(scene, f"llava-bench-in-the-wild/images/{image}")
        contexts.append({"id": f"{k + 1:03d}", "image": image, "caption": _description(scene)})
        o = rng.choice(scene.objects)
        name = ref(scene, o, color=False)
        items = [("conv", f"What color is {name}?", f"{name[0].upper()}{name[1:]} is {o.color}.")]
        if k % 2 == 0:
            items.append(("detail", "Describe this photo in detail.", _description(scene)))
        else:
            items.append(
                (
                    "complex",
                    "Which of the shapes could roll away if the table were tilted, and why?",
                    _rolling(scene),
                )
            )
        for category, question, reference in items:
            qid = len(questions)
            questions.append({"question_id": qid, "image": image, "text": question, "category": category})
            answers.append(
                {
                    "question_id": qid,
                    "prompt": question,
                    "text": reference,
                    "answer_id": hex_id(rng, 22),
                    "model_id": "gpt-4-0314",
                    "metadata": {},
                }
            )
    b.jsonl(LLaVAWild.QUESTION_FILE, questions)
    b.jsonl(f"{LLaVAWild.ROOT}/context.jsonl", contexts)
    b.jsonl(f"{LLaVAWild.ROOT}/answers_gpt4.jsonl", answers)


MMVET_CAPABILITIES = (["rec"], ["ocr"], ["rec", "know"], ["rec", "spat"], ["rec", "math"], ["rec", "gen"])


def _mmvet_item(kind: int, scene: Scene, rng: random.Random) -> tuple[str, str]:
    o = rng.choice(scene.objects)
    n = len(scene.objects)
    if kind == 0:
        return f"What color is {ref(scene, o, color=False)}?", o.color
    if kind == 1:
        return "What word is written in the image?", scene.text
    if kind == 2:
        corners = CORNERS[o.shape]
        return f"How many corners does {ref(scene, o)} have?", f"{corners}<OR>{NUMBER_NAMES[corners]}"
    if kind == 3:
        o = rng.choice(unique(scene))
        return f"On which side of the image is {named(o)}?", o.side
    if kind == 4:
        return (
            "How many shapes would there be if one more shape were added to the picture?",
            f"{n + 1}<OR>{NUMBER_NAMES[n + 1]}",
        )
    return (
        "Write a one-sentence caption for this image.",
        "<AND>".join(f"{o.color} {o.shape}" for o in scene.objects),
    )


def write_mmvet(b: Build) -> None:
    """``mm-vet/llava-mm-vet.jsonl`` + ``mm-vet/mm-vet.json`` (``{"v1_<id>": {imagename, capability, question,
    answer}}``) + ``images/v1_<id>.png``; one question per image over the six capabilities (rec, ocr, know,
    spat, math, gen)."""
    rng = b.rng()
    rows, metadata = [], {}
    for k in range(b.n_images):
        kind = k % len(MMVET_CAPABILITIES)
        scene = scene_where(rng, lambda s, kind=kind: kind != 3 or bool(unique(s)), text=kind == 1)
        image = f"v1_{k}.png"
        b.save(scene, f"mm-vet/images/{image}")
        question, answer = _mmvet_item(kind, scene, rng)
        rows.append({"image": image, "text": question, "category": "conv", "question_id": k})
        metadata[f"v1_{k}"] = {
            "imagename": image,
            "capability": MMVET_CAPABILITIES[kind],
            "question": question,
            "answer": answer,
        }
    b.jsonl(MMVet.QUESTION_FILE, rows)
    b.json(MMVet.METADATA, metadata, indent=4)
