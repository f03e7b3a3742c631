"""The synthetic benchmark twins (``lmm.synth.benchmarks``) are read and scored by the same readers and
scorers as the real files (``lmm.evaluation.benchmarks``): an oracle answer file (ground truth read back from
the written GT files, in a form the official parser accepts) reaches the top score, and a constant (blind)
answer file scores exactly the chance level the twin is built for. Generation is deterministic and
idempotent."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lmm.evaluation.answers import make_answer_record
from lmm.evaluation.benchmarks import BENCHMARKS, get_benchmark
from lmm.evaluation.benchmarks.base import MULTIPLE_CHOICE_SUFFIX, SHORT_ANSWER_SUFFIX
from lmm.evaluation.benchmarks.mmbench import CN_SUFFIX
from lmm.evaluation.benchmarks.vizwiz import VIZWIZ_SUFFIX
from lmm.evaluation.judge import judge_llava_wild, judge_mmvet
from lmm.synth import bench_common as common
from lmm.synth import write_synthetic_benchmarks as reexported
from lmm.synth.bench_yesno import POPE_SPLITS, pope_negatives
from lmm.synth.benchmarks import SYNTH_BENCHMARKS, write_synthetic_benchmarks
from lmm.synth.scenes import COLORS, Obj, Scene

N, SIZE = 24, 64  # the defaults; the chance levels below are exact for them
SCORED_LOCALLY = {"vqav2": {"split": "val"}, "vizwiz": {"split": "val"}}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_synthetic_benchmarks(tmp_path_factory.mktemp("synth") / "eval", N, SIZE)


def bench(name: str):
    return get_benchmark(name).with_options(**SCORED_LOCALLY.get(name, {}))


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def majority(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


# ------------------------------------------------------------- oracles: the GT, read back from the GT files


def oracle(name: str, root: Path):
    """``question -> answer text`` built from the benchmark's ground-truth files only."""
    if name == "gqa":
        gt = read(root / "gqa/data/testdev_balanced_questions.json")
        return lambda q: (
            gt[q.question_id]["answer"].capitalize() + "."
        )  # the converter strips '.' and lowercases
    if name == "vqav2":
        ann = {
            a["question_id"]: a
            for a in read(root / "vqav2/v2_mscoco_val2014_annotations.json")["annotations"]
        }
        return lambda q: ann[q.question_id]["multiple_choice_answer"].capitalize()
    if name == "vizwiz":
        gt = {item["image"]: item for item in read(root / "vizwiz/val.json")}
        return lambda q: majority([a["answer"] for a in gt[q.image.name]["answers"]]).capitalize()
    if name == "textvqa":
        data = read(root / "textvqa/TextVQA_0.5.1_val.json")["data"]
        gt = {(d["image_id"], d["question"].lower()): d["answers"] for d in data}
        return lambda q: majority(gt[(q.question_id, q.prompt.split("\n")[0].lower())])
    if name == "scienceqa":
        problems = read(root / "scienceqa/problems.json")
        return lambda q: "ABCDE"[problems[q.question_id]["answer"]]
    if name == "pope":
        labels = {}
        rows = jsonl(root / "pope/llava_pope_test.jsonl")
        for split in POPE_SPLITS:
            in_split = [r for r in rows if r["category"] == split]
            for row, label in zip(in_split, jsonl(root / f"pope/coco/coco_pope_{split}.json"), strict=True):
                labels[row["question_id"]] = label["label"]
        return lambda q: labels[q.question_id].capitalize()
    if name == "mme":
        release = root / "MME/MME_Benchmark_release_version"

        def mme(q):
            task, *nested, image = q.question_id.split("/")
            folder = release / task / ("questions_answers_YN" if nested else "")
            lines = (folder / (Path(image).stem + ".txt")).read_text(encoding="utf-8").splitlines()
            question = q.prompt.replace(SHORT_ANSWER_SUFFIX, "") + " Please answer yes or no."
            return dict(line.split("\t") for line in lines)[question]

        return mme
    if name in ("mmbench", "mmbench_cn"):
        path = root / (
            "mmbench/mmbench_dev_20230712.tsv"
            if name == "mmbench"
            else "mmbench_cn/mmbench_dev_cn_20231003.tsv"
        )
        with path.open(encoding="utf-8", newline="") as handle:
            answers = {int(row["index"]): row["answer"] for row in csv.DictReader(handle, delimiter="\t")}
        return lambda q: answers[q.question_id]
    if name == "seed":
        gt = {g["question_id"]: g["answer"] for g in read(root / "seed_bench/SEED-Bench.json")["questions"]}
        return lambda q: gt[q.question_id]
    if name == "llava_wild":
        refs = {
            a["question_id"]: a["text"] for a in jsonl(root / "llava-bench-in-the-wild/answers_gpt4.jsonl")
        }
        return lambda q: refs[q.question_id]
    meta = read(root / "mm-vet/mm-vet.json")
    return lambda q: " and ".join(meta[f"v1_{q.question_id}"]["answer"].split("<OR>")[0].split("<AND>"))


# name -> (constant answer, score of the oracle, score of the constant); exact for N = 24
EXPECTED = {
    "gqa": ("Yes", 100.0, 18.75),  # 2 questions per image; 9 of 48 answers are "yes"
    "vqav2": ("Yes", 100.0, 100 / 6),  # colour, count, presence per image; presence is yes on half the images
    "vizwiz": ("Unanswerable", 100.0, 25.0),  # a quarter of the questions are unanswerable
    "textvqa": ("Red", 100.0, 12.5),  # word + text colour per image; the colours cycle over 4
    "scienceqa": ("A", 100.0, 25.0),  # IMG accuracy; 4 options, gold positions balanced
    "pope": ("Yes", 100.0, 200 / 3),  # mean F1; every split exactly balanced: P = 0.5, R = 1
    "mme": ("Yes", 1200.0, 300.0),  # perception: 6 tasks x (acc 50 + acc+ 0); cognition below
    "mmbench": ("A", 100.0, 0.0),  # CircularEval: a constant letter never passes every rotation
    "mmbench_cn": ("A", 100.0, 0.0),
    "seed": ("A", 100.0, 25.0),  # 4 options, gold positions balanced
    "llava_wild": ("I cannot tell.", 100.0, 10.0),  # exact-match judge: 10 for the reference, 1 otherwise
    "mmvet": ("I cannot tell.", 100.0, 0.0),  # exact-match grader
}


class ExactJudge:
    """A deterministic stand-in for the LLaVA-W judge (same client interface): Assistant 1 (the reference)
    gets 10; Assistant 2 gets 10 if it repeats the reference, else 1."""

    def complete(self, messages, *, temperature, max_tokens):
        content = messages[-1]["content"]

        def part(start, end):
            return content.split(start, 1)[1].split(end, 1)[0].strip()

        assert part("[Context]\n", "[Question]"), "the judge got no caption context"
        same = part("[Assistant 1]\n", "[End of Assistant 1]") == part(
            "[Assistant 2]\n", "[End of Assistant 2]"
        )
        return ("10 10" if same else "10 1") + "\nexact-match review", "exact-match"


class ExactGrader:
    """A deterministic MM-Vet grader: 1.0 when the prediction is one of the ``<OR>`` answers or contains every
    ``<AND>`` part, else 0.0."""

    def complete(self, messages, *, temperature, max_tokens):
        _, gt, prediction, _ = messages[-1]["content"].split("\n")[-1].split(" | ")
        prediction = prediction.strip().lower()
        if " <AND> " in gt:
            right = all(part.strip().lower() in prediction for part in gt.split(" <AND> "))
        else:
            right = any(alt.strip().lower() == prediction for alt in gt.split(" <OR> "))
        return ("1.0" if right else "0.0"), "exact-match"


def score(name: str, root: Path, texts, tmp_path: Path) -> dict:
    b = bench(name)
    records = [
        make_answer_record(q, texts(q), "synthetic", answer_id=f"a{i}")
        for i, q in enumerate(b.questions(root))
    ]
    judgments = None
    if name == "llava_wild":
        judgments = [judge_llava_wild(ExactJudge(), root, records, tmp_path / "reviews.jsonl", resume=False)]
    elif name == "mmvet":
        judgments = [judge_mmvet(ExactGrader(), root, records, tmp_path / "grade-1runs.json", resume=False)]
    return b.score(records, root, judgments=judgments)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_oracle_scores_top_and_constant_scores_chance(root, tmp_path, name):
    constant, top, chance = EXPECTED[name]
    perfect = score(name, root, oracle(name, root), tmp_path / "oracle")
    assert perfect["score"] == pytest.approx(top)
    blind = score(name, root, lambda q: constant, tmp_path / "constant")
    assert blind["score"] == pytest.approx(chance)
    assert not perfect.get("n_missing") and not perfect.get("n_duplicates")
    if name == "mme":
        assert (perfect["cognition"], blind["cognition"]) == (pytest.approx(800.0), pytest.approx(200.0))
        assert sorted(perfect["tasks_missing"]) == ["artwork", "celebrity", "landmark", "scene"]
    if name == "pope":
        assert set(POPE_SPLITS) <= set(perfect)
        assert all(blind[s]["accuracy"] == pytest.approx(50.0) for s in POPE_SPLITS)
    if name.startswith("mmbench"):  # one row per rotation has gold A: row accuracy = groups / rows
        assert blind["row_accuracy"] == pytest.approx(100 * blind["n_groups"] / blind["n_questions"])
        assert blind["n_groups"] == N and blind["n_questions"] > N


def test_every_benchmark_is_built_and_read_by_the_official_readers(root):
    assert set(SYNTH_BENCHMARKS) == set(BENCHMARKS)
    for name in BENCHMARKS:
        questions = bench(name).questions(root)
        assert questions, name
        assert len({(q.question_id, q.prompt) for q in questions}) == len(questions), name
        for q in questions[:: max(1, len(questions) // 6)]:
            image = q.load_image()
            assert image is None or max(image.size) == SIZE, name
    structural = {
        q["types"]["structural"] for q in read(root / "gqa/data/testdev_balanced_questions.json").values()
    }
    assert structural == {"verify", "query", "choose", "logical", "compare"}
    assert {
        a["answer_type"] for a in read(root / "vqav2/v2_mscoco_val2014_annotations.json")["annotations"]
    } == {"yes/no", "number", "other"}
    assert all(
        len(a["answers"]) == 10
        for a in read(root / "vqav2/v2_mscoco_val2014_annotations.json")["annotations"]
    )
    assert {v["answer_type"] for v in read(root / "vizwiz/val.json")} == {
        "other",
        "number",
        "yes/no",
        "unanswerable",
    }


def test_official_prompt_formats(root):
    assert (common.SHORT_ANSWER, common.MULTIPLE_CHOICE, common.CN_SUFFIX) == (
        SHORT_ANSWER_SUFFIX,
        MULTIPLE_CHOICE_SUFFIX,
        CN_SUFFIX,
    )
    assert common.VIZWIZ_HINT + common.SHORT_ANSWER == VIZWIZ_SUFFIX
    assert all(
        q.prompt.endswith(VIZWIZ_SUFFIX) for q in get_benchmark("vizwiz").questions(root)
    )  # test split
    assert get_benchmark("vqav2").questions(root)  # LLaVA's test-dev file (default split)
    for q in get_benchmark("textvqa").questions(root):
        lines = q.prompt.split("\n")
        assert len(lines) == 3 and lines[1].startswith("Reference OCR token: ") and lines[1][21:]
    sqa = get_benchmark("scienceqa").questions(root)
    assert sum(q.has_image for q in sqa) == N and sum(not q.has_image for q in sqa) == N // 2
    assert all(q.answer_prompt.startswith("<image>\n") == q.has_image for q in sqa)
    release = root / "MME/MME_Benchmark_release_version"
    assert (release / "posters/images").is_dir() and (release / "posters/questions_answers_YN").is_dir()
    assert all(
        line.endswith(("\tYes", "\tNo"))
        for p in release.rglob("*.txt")
        for line in p.read_text(encoding="utf-8").splitlines()
    )
    tsv = (root / "mmbench/mmbench_dev_20230712.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0].split("\t")[:8] == ["index", "question", "hint", "A", "B", "C", "D", "answer"]
    assert {int(line.split("\t")[0]) // 1_000_000 for line in tsv[1:]} == {0, 1, 2, 3}
    label = jsonl(root / "pope/coco/coco_pope_random.json")[0]
    assert list(label) == ["question_id", "image", "text", "label"] and label["question_id"] == 1


def test_answers_are_in_the_pixels(root):
    """Every colour the VQAv2 twin asks about is painted in its image (up to JPEG noise)."""
    annotations = read(root / "vqav2/v2_mscoco_val2014_annotations.json")["annotations"]
    for ann in (a for a in annotations if a["question_type"] == "what color is the"):
        image = Image.open(root / f"vqav2/val2014/COCO_val2014_{ann['image_id']:012d}.jpg").convert("RGB")
        target = COLORS[ann["multiple_choice_answer"]]
        assert any(sum(abs(p - t) for p, t in zip(pixel, target)) < 60 for pixel in image.getdata()), ann


def test_pope_sampling_strategies():
    def scene(*shapes):
        return Scene(
            tuple(Obj(s, "red", "small", 0.5, 0.5, 0.1, i) for i, s in enumerate(shapes)), (220,) * 3
        )

    scenes = [
        scene("circle", "square"),
        scene("circle", "square"),
        scene("triangle"),
        scene("triangle"),
        scene("triangle"),
        scene("circle"),
    ]
    negatives = pope_negatives(scenes, random.Random(0))
    assert negatives["popular"][5] == "triangle"  # the most frequent absent shape overall
    assert negatives["adversarial"][5] == "square"  # the absent shape seen most often with a circle
    for split in POPE_SPLITS:
        assert all(neg not in s.shapes() for neg, s in zip(negatives[split], scenes))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_idempotent_and_safe(root, tmp_path):
    again = tmp_path / "again"  # another process, another str-hash seed: still byte-identical files
    build = "from lmm.synth.benchmarks import write_synthetic_benchmarks as w; w(*sys.argv[1:2], {}, {})"
    build = "import sys; " + build.format(N, SIZE)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", build, str(again)], check=True, env=env, timeout=120)
    assert _files(again) == _files(root)
    other = write_synthetic_benchmarks(tmp_path / "other", N, SIZE, seed=1, names=["gqa"])
    assert (other / "gqa/data/testdev_balanced_questions.json").read_bytes() != (
        root / "gqa/data/testdev_balanced_questions.json"
    ).read_bytes()
    assert sorted(p.name for p in other.iterdir()) == ["gqa"]
    stamp = again / "pope/llava_pope_test.jsonl"
    before = stamp.stat().st_mtime_ns
    assert reexported is write_synthetic_benchmarks
    reexported(again, N, SIZE, names=["pope"])
    assert stamp.stat().st_mtime_ns == before  # same parameters: nothing rewritten
    write_synthetic_benchmarks(again, 4, SIZE, names=["pope"])
    assert len(jsonl(stamp)) == 4 * 2 * 3  # other parameters: rebuilt
    real = tmp_path / "real" / "gqa"
    real.mkdir(parents=True)
    (real / "testdev_balanced_questions.json").write_text("{}")
    with pytest.raises(FileExistsError):
        write_synthetic_benchmarks(tmp_path / "real", names=["gqa"])
    with pytest.raises(ValueError, match="unknown synthetic benchmark"):
        write_synthetic_benchmarks(tmp_path / "x", names=["coco"])


def test_any_size_and_count(tmp_path):
    small = write_synthetic_benchmarks(tmp_path / "one", 1, 16)
    for name in BENCHMARKS:
        assert bench(name).questions(small), name
    big = write_synthetic_benchmarks(tmp_path / "big", 2, 336, names=["textvqa", "mme"])
    image = get_benchmark("textvqa").questions(big)[0].load_image()
    assert max(image.size) == 336
    assert len(get_benchmark("mme").questions(big)) == 2 * 2 * 10


def test_the_test_splits_are_in_the_official_layout(root):
    """eval=official runs VQAv2 test-dev and VizWiz test offline on the twins (issue 22 item 2): the twins hold the
    files of the official releases beside LLaVA's question JSONL — VQAv2's test2015 / test-dev question files
    (``v2_OpenEnded_mscoco_<split>_questions.json``, test-dev a subset of test2015) and VizWiz's ``test.json``
    (``[{image, question}]``, the order of ``llava_test.jsonl``) — with every image in place."""
    test2015 = jsonl(root / "vqav2/llava_vqav2_mscoco_test2015.jsonl")
    test_dev = jsonl(root / "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl")
    assert test_dev and len(test_dev) < len(test2015) and all(row in test2015 for row in test_dev)
    for split, rows in (("test2015", test2015), ("test-dev2015", test_dev)):
        official = read(root / f"vqav2/v2_OpenEnded_mscoco_{split}_questions.json")
        assert official["data_subtype"] == split and official["task_type"] == "Open-Ended"
        assert [(q["question_id"], f"COCO_test2015_{q['image_id']:012d}.jpg", q["question"] + SHORT_ANSWER_SUFFIX)
                for q in official["questions"]] == [(r["question_id"], r["image"], r["text"]) for r in rows]
    assert all((root / "vqav2/test2015" / r["image"]).is_file() for r in test2015)
    vizwiz = read(root / "vizwiz/test.json")
    llava = jsonl(root / "vizwiz/llava_test.jsonl")
    assert [set(item) for item in vizwiz] == [{"image", "question"}] * len(llava)
    assert [(i, v["image"], v["question"] + VIZWIZ_SUFFIX) for i, v in enumerate(vizwiz)] == \
        [(r["question_id"], r["image"], r["text"]) for r in llava]
    assert all((root / "vizwiz/test" / v["image"]).is_file() for v in vizwiz)
