"""Shared pieces of the synthetic benchmark writers: the prompt suffixes of the official question files, a
per-benchmark build context (deterministic RNG streams, image saving, JSON writers) and scene/question helpers
that keep every question unambiguous, so its answer is derivable from the pixels."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmm.evaluation.benchmarks.base import SYNTHETIC_MARKER
from lmm.synth.scenes import SHAPES, Obj, Scene, make_scene, render
from lmm.text import prompts

# The suffixes exactly as the official question files carry them (checked against the readers in the tests).
SHORT_ANSWER = "\n" + prompts.SHORT_ANSWER
MULTIPLE_CHOICE = "\n" + prompts.OPTION_LETTER
VIZWIZ_HINT = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
CN_SUFFIX = "\n请直接回答选项字母。"
MME_YES_NO = " Please answer yes or no."
LETTERS = "ABCDE"
CORNERS = {"circle": 0, "square": 4, "triangle": 3}
NUMBER_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ASPECTS = (1.0, 4 / 3, 3 / 4)
MARKER = SYNTHETIC_MARKER  # how lmm.evaluation tells a twin from real files (the run's `benchmark_data` tag)


@dataclass(frozen=True)
class Build:
    """What one benchmark writer gets: where to write, how many images, how large, and its RNG streams."""

    root: Path  # LLaVA's playground/data/eval
    n_images: int
    image_size: int
    seed: int
    name: str

    def rng(self, stream: str = "") -> random.Random:
        """An independent, process-stable RNG per (seed, benchmark, stream): str seeds hash with SHA-512."""
        return random.Random(f"lmm-synth-bench/{self.seed}/{self.name}/{stream}")

    def save(self, scene: Scene, rel: str | Path) -> Path:
        """Render ``scene`` to ``root/rel`` (JPEG quality 95 for ``.jpg``, PNG otherwise)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = render(scene, self.image_size)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            image.save(path, format="JPEG", quality=95)
        else:
            image.save(path, format="PNG")
        return path

    def b64(self, scene: Scene) -> str:
        """The scene as a base64 JPEG (MMBench's TSV cell)."""
        buffer = io.BytesIO()
        render(scene, self.image_size).save(buffer, format="JPEG", quality=95)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def jsonl(self, rel: str, rows: Sequence[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row) + "\n" for row in rows)
        self._write(rel, text)

    def json(self, rel: str, data: Any, indent: int | None = None) -> None:
        self._write(rel, json.dumps(data, indent=indent))

    def text(self, rel: str, text: str) -> None:
        self._write(rel, text)

    def tsv(self, rel: str, header: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if row.get(column) is None else row[column] for column in header])
        self._write(rel, buffer.getvalue())

    def _write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def scene_where(
    rng: random.Random,
    accept: Callable[[Scene], bool] = lambda scene: True,
    *,
    text: bool = False,
    aspects: Sequence[float] = ASPECTS,
) -> Scene:
    """The first scene ``make_scene`` draws that ``accept`` takes (deterministic under ``rng``)."""
    for _ in range(10_000):
        scene = make_scene(rng, 3, text_prob=1.0 if text else 0.0, aspects=tuple(aspects))
        if accept(scene):
            return scene
    raise RuntimeError("no scene satisfies the benchmark's constraint; the constraint is impossible")


def absent_shapes(scene: Scene) -> list[str]:
    return [shape for shape in SHAPES if shape not in scene.shapes()]


def where(obj: Obj) -> str:
    """``on the left`` / ``in the middle`` / ``on the right``."""
    return "in the middle" if obj.side == "middle" else f"on the {obj.side}"


def unique(scene: Scene) -> list[Obj]:
    """Objects no other object shares colour and shape with (nameable without saying where they are)."""
    return [o for o in scene.objects if scene.count(shape=o.shape, color=o.color) == 1]


def ref(scene: Scene, obj: Obj, color: bool = True) -> str:
    """The shortest unambiguous name of ``obj``: ``the circle``, ``the red circle`` or ``the circle on the
    left`` (never by colour with ``color=False``, for questions that ask for the colour)."""
    if scene.count(shape=obj.shape) == 1:
        return f"the {obj.shape}"
    if color and scene.count(shape=obj.shape, color=obj.color) == 1:
        return f"the {obj.color} {obj.shape}"
    return f"the {obj.shape} {where(obj)}"


def named(obj: Obj) -> str:
    """``the red circle`` (for objects in :func:`unique`, where the position must not be given away)."""
    return f"the {obj.color} {obj.shape}"


def has_pair(scene: Scene) -> bool:
    return len(unique(scene)) >= 2


def ten_answers(rng: random.Random, answer: str, variants: Sequence[str] = ()) -> list[str]:
    """Ten annotator answers: ``answer`` at least eight times, at most two taken from ``variants``, so the
    majority answer always gets full soft accuracy."""
    answers = [answer] * 10
    if variants:
        for slot in rng.sample(range(10), rng.choice((0, 0, 1, 2))):
            answers[slot] = rng.choice(list(variants))
    return answers


def place(correct: str, distractors: Sequence[str], position: int, rng: random.Random) -> list[str]:
    """Options with ``correct`` at ``position`` (distractors shuffled around it); ``position`` cycling over
    the questions balances the gold letters, so a constant letter scores exactly the uniform chance."""
    others = [d for d in distractors if d != correct]
    rng.shuffle(others)
    others.insert(position, correct)
    return others


def options_text(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def hex_id(rng: random.Random, digits: int = 16) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"
