"""The benchmark registry and the common interface."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from lmm.evaluation.benchmarks import BENCHMARKS, Question, get_benchmark

NAMES = [
    "vqav2",
    "gqa",
    "vizwiz",
    "scienceqa",
    "textvqa",
    "pope",
    "mme",
    "mmbench",
    "mmbench_cn",
    "seed",
    "llava_wild",
    "mmvet",
]


def test_registry_names_and_lookup():
    assert list(BENCHMARKS) == NAMES
    assert all(BENCHMARKS[name].name == name for name in NAMES)
    with pytest.raises(ValueError, match="known: vqav2, gqa"):
        get_benchmark("pop")  # no substring / prefix matching
    with pytest.raises(ValueError):
        get_benchmark("POPE")


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("vqav2", "vqav2/test2015"),
        ("gqa", "gqa/data/images"),
        ("vizwiz", "vizwiz/test"),
        ("scienceqa", "scienceqa/images/test"),
        ("textvqa", "textvqa/train_images"),
        ("pope", "pope/val2014"),
        ("mme", "MME/MME_Benchmark_release_version"),
        ("seed", "seed_bench"),
        ("llava_wild", "llava-bench-in-the-wild/images"),
        ("mmvet", "mm-vet/images"),
    ],
)
def test_image_folders_follow_llava_scripts(name, folder, tmp_path):
    bench = get_benchmark(name)
    assert bench.image_dir(tmp_path) == tmp_path / folder
    assert bench.with_options(image_folder="elsewhere").image_dir(tmp_path) == tmp_path / "elsewhere"
    assert bench.with_options(image_folder=str(tmp_path / "abs")).image_dir("/x") == tmp_path / "abs"


def test_mmvet_fixture_questions(eval_samples):
    questions = get_benchmark("mmvet").questions(eval_samples)
    assert questions[0].prompt == "What is x in the equation?" and questions[0].question_id == 0
    assert questions[2].image == eval_samples / "mm-vet/images/v1_1.png"


def test_question_load_image(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGBA", (5, 4)).save(path)
    assert Question(question_id=1, prompt="q", image=path).load_image().mode == "RGB"
    buffer = io.BytesIO()
    Image.new("L", (2, 3)).save(buffer, format="JPEG")
    b64 = Question(question_id=2, prompt="q", image_b64=base64.b64encode(buffer.getvalue()).decode())
    assert b64.has_image and b64.load_image().size == (2, 3)
    text_only = Question(question_id=3, prompt="q")
    assert not text_only.has_image and text_only.load_image() is None and text_only.answer_prompt == "q"
