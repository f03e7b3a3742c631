"""Open-ended short-answer twins scored by VQA soft accuracy: VQAv2, VizWiz and TextVQA, in the files and
record formats of the official releases (and of LLaVA's question JSONL files)."""

from __future__ import annotations

import dataclasses
import random

from lmm.evaluation.benchmarks.textvqa import TextVQA
from lmm.evaluation.benchmarks.vizwiz import VizWiz
from lmm.evaluation.benchmarks.vqav2 import VQAv2
from lmm.synth.bench_common import (
    NUMBER_NAMES,
    SHORT_ANSWER,
    VIZWIZ_HINT,
    Build,
    absent_shapes,
    hex_id,
    ref,
    scene_where,
    ten_answers,
)
from lmm.synth.scenes import COLORS, WORDS, Scene


def _vqa_items(scene: Scene, rng: random.Random, kind: str, yes: bool) -> tuple[str, str, str, list[str]]:
    """``(question, answer, answer_type, variants)`` of one short-answer question about ``scene``."""
    if kind == "color":
        o = rng.choice(scene.objects)
        return (
            f"What color is {ref(scene, o, color=False)}?",
            o.color,
            "other",
            [f"dark {o.color}", f"light {o.color}"],
        )
    if kind == "count":
        n = len(scene.objects)
        return "How many shapes are there?", str(n), "number", [NUMBER_NAMES[n], str(n + 1)]
    if kind == "presence":
        shape = rng.choice(sorted(scene.shapes()) if yes else absent_shapes(scene))
        return f"Is there a {shape} in the image?", "yes" if yes else "no", "yes/no", []
    shape = rng.choice(absent_shapes(scene))  # unanswerable: the shape asked about is not in the picture
    return f"What color is the {shape}?", "unanswerable", "unanswerable", []


def _needs_absent(kinds, yes: bool) -> bool:
    return "unanswerable" in kinds or ("presence" in kinds and not yes)


VQA_TYPES = {"color": "what color is the", "count": "how many", "presence": "is there a"}
VQA_KINDS = ("color", "count", "presence")


def write_vqav2(b: Build) -> None:
    """Local-scoring val split in the official VQA files (``v2_OpenEnded_mscoco_val2014_questions.json``,
    ``v2_mscoco_val2014_annotations.json`` with 10 answers per question, ``val2014/``) and the test split as
    released (``v2_OpenEnded_mscoco_{test2015,test-dev2015}_questions.json``, ``test2015/``) with LLaVA's question
    files of it (``llava_vqav2_mscoco_test2015.jsonl``, which the EvalAI file covers, and its test-dev subset, which
    eval=official answers). Per image: a colour, a count and a presence question (yes on even images, no on odd
    ones)."""
    rng = b.rng("val")
    official, annotations = [], []
    for k in range(b.n_images):
        yes = k % 2 == 0
        scene = scene_where(rng, lambda s, yes=yes: yes or bool(absent_shapes(s)))
        image_id = 100000 + 11 * k
        b.save(scene, f"vqav2/val2014/COCO_val2014_{image_id:012d}.jpg")
        for j, kind in enumerate(VQA_KINDS):
            question, answer, answer_type, variants = _vqa_items(scene, rng, kind, yes)
            qid = image_id * 1000 + j
            official.append({"image_id": image_id, "question": question, "question_id": qid})
            answers = ten_answers(rng, answer, variants)
            annotations.append(
                {
                    "question_type": VQA_TYPES[kind],
                    "multiple_choice_answer": answer,
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(answers)
                    ],
                    "image_id": image_id,
                    "answer_type": answer_type,
                    "question_id": qid,
                }
            )
    b.json(VQAv2.OFFICIAL_VAL_QUESTIONS, _vqa_questions_file("val2014", official))
    b.json(
        VQAv2.VAL_ANNOTATIONS,
        {
            "info": VQA_INFO,
            "license": VQA_LICENSE,
            "data_subtype": "val2014",
            "annotations": annotations,
            "data_type": "mscoco",
        },
    )
    rng = b.rng("test")
    test, test_dev, official_test, official_dev = [], [], [], []
    for k in range(max(2, b.n_images // 2)):
        yes = k % 2 == 0
        scene = scene_where(rng, lambda s, yes=yes: yes or bool(absent_shapes(s)))
        image_id = 200000 + 13 * k
        image = f"COCO_test2015_{image_id:012d}.jpg"
        b.save(scene, f"vqav2/test2015/{image}")
        for j, kind in enumerate(VQA_KINDS):
            question = _vqa_items(scene, rng, kind, yes)[0]
            row = {
                "question_id": image_id * 1000 + j,
                "image": image,
                "text": question + SHORT_ANSWER,
                "category": "default",
            }
            official = {"image_id": image_id, "question": question, "question_id": row["question_id"]}
            test.append(row)
            official_test.append(official)
            if k % 2 == 0:  # test-dev is a subset of test2015
                test_dev.append(row)
                official_dev.append(official)
    b.jsonl(VQAv2.TEST_QUESTIONS, test)
    b.jsonl(VQAv2.QUESTION_FILES["test-dev"], test_dev)
    b.json("vqav2/v2_OpenEnded_mscoco_test2015_questions.json", _vqa_questions_file("test2015", official_test))
    b.json("vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json",
           _vqa_questions_file("test-dev2015", official_dev))


VQA_INFO = {"description": "Synthetic twin of VQA v2 (procedural scenes)", "version": "2.0", "year": 2017}
VQA_LICENSE = {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}


def _vqa_questions_file(subtype: str, questions: list[dict]) -> dict:
    """An official VQA question file (``v2_OpenEnded_mscoco_<subtype>_questions.json``)."""
    return {"info": VQA_INFO, "task_type": "Open-Ended", "data_type": "mscoco", "license": VQA_LICENSE,
            "data_subtype": subtype, "questions": questions}


VIZWIZ_KINDS = ("color", "count", "presence", "unanswerable")


def write_vizwiz(b: Build) -> None:
    """Local-scoring ``val.json`` (official format: 10 answers, ``answer_type``, ``answerable``) with
    ``val/``, and the test split as released (``test.json``: ``[{image, question}]``, ``test/``) with LLaVA's
    ``llava_test.jsonl`` of it (``question_id`` = position). One question per image, a quarter unanswerable
    (they ask about a shape that is not in the picture)."""
    for split in ("val", "test"):
        rng = b.rng(split)
        val, test, released = [], [], []
        n = b.n_images if split == "val" else max(2, b.n_images // 2)
        for k in range(n):
            kind, yes = VIZWIZ_KINDS[k % 4], (k // 4) % 2 == 0
            scene = scene_where(
                rng, lambda s, kind=kind, yes=yes: not _needs_absent([kind], yes) or bool(absent_shapes(s))
            )
            image = f"VizWiz_{split}_{k:08d}.jpg"
            b.save(scene, f"vizwiz/{split}/{image}")
            question, answer, answer_type, variants = _vqa_items(scene, rng, kind, yes)
            if split == "test":
                released.append({"image": image, "question": question})
                test.append(
                    {
                        "question_id": k,
                        "image": image,
                        "text": question + VIZWIZ_HINT + SHORT_ANSWER,
                        "category": "default",
                    }
                )
                continue
            answers = ten_answers(rng, answer, variants)
            val.append(
                {
                    "image": image,
                    "question": question,
                    "answers": [{"answer_confidence": "yes", "answer": a} for a in answers],
                    "answer_type": answer_type,
                    "answerable": int(answer_type != "unanswerable"),
                }
            )
        if split == "val":
            b.json(VizWiz.VAL_ANNOTATIONS, val)
        else:
            b.json(VizWiz.TEST_QUESTIONS, released)
            b.jsonl(VizWiz.QUESTION_FILES["test"], test)


# ----------------------------------------------------------------------------------------------- TextVQA

_OCR_SLIPS = {"O": "0", "S": "5", "I": "1", "E": "3", "A": "4", "B": "8", "T": "7"}


def _ocr_tokens(word: str, rng: random.Random) -> list[str]:
    """What a Rosetta-like OCR returns: the word, sometimes next to a misread copy."""
    if rng.random() < 0.5:
        return [word]
    slip = next((i for i, ch in enumerate(word) if ch in _OCR_SLIPS), 0)
    misread = word[:slip] + _OCR_SLIPS.get(word[slip], word[slip].lower()) + word[slip + 1 :]
    return [misread, word] if rng.random() < 0.5 else [word, misread]


def write_textvqa(b: Build) -> None:
    """``llava_textvqa_val_v051_ocr.jsonl`` (``question_id`` = image id, the ``Reference OCR token:`` line) +
    ``TextVQA_0.5.1_val.json`` + ``train_images/``. Per image: which word is written, and in what colour (word
    and colour cycle, so every word and colour is equally frequent)."""
    rng = b.rng()
    rows, data = [], []
    colors = list(COLORS)
    for k in range(b.n_images):
        scene = scene_where(rng, text=True)
        scene = dataclasses.replace(scene, text=WORDS[k % len(WORDS)], text_color=colors[k % len(colors)])
        image_id = hex_id(rng)
        path = b.save(scene, f"textvqa/train_images/{image_id}.jpg")
        tokens = _ocr_tokens(scene.text, rng)
        width, height = scene.canvas(b.image_size)
        items = [
            (
                "What word is written in the image?",
                scene.text.lower(),
                [scene.text, f"{scene.text.lower()} sign"],
            ),
            ("What color is the text?", scene.text_color, [f"dark {scene.text_color}"]),
        ]
        for j, (question, answer, variants) in enumerate(items):
            rows.append(
                {
                    "question_id": image_id,
                    "image": path.name,
                    "text": f"{question}\nReference OCR token: {', '.join(tokens)}{SHORT_ANSWER}",
                    "category": "default",
                }
            )
            data.append(
                {
                    "question": question,
                    "image_id": image_id,
                    "image_classes": ["Sign", "Shape"],
                    "flickr_original_url": "",
                    "flickr_300k_url": "",
                    "image_width": width,
                    "image_height": height,
                    "answers": ten_answers(rng, answer, variants),
                    "question_tokens": question[:-1].lower().split(),
                    "question_id": 34602 + 2 * k + j,
                    "set_name": "val",
                }
            )
    b.jsonl(TextVQA.QUESTION_FILE, rows)
    b.json(
        TextVQA.ANNOTATIONS,
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data},
    )
