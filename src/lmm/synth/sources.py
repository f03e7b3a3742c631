"""Synthetic twins of every training source, in the official file layout and record format.

``write_llava_data(root)`` writes what LLaVA's README puts under ``playground/data``:
``LLaVA-Pretrain/blip_laion_cc_sbu_558k.json`` + ``LLaVA-Pretrain/images/`` (stage 1) and
``llava_v1_5_mix665k.json`` with images under ``coco/train2017/``, ``gqa/images/``, ``ocr_vqa/images/``,
``textvqa/train_images/``, ``vg/VG_100K/`` (stage 2). Every source carries the exact response-format prompt of its
real counterpart (spec §2.2), so the same source rules, mixtures and format-prompt policies apply to both; the
per-source shares follow the 665K table. Deterministic under ``seed``.

Record ids are ``<source>-NNNNNN`` (``vqav2-000007``, ``okvqa-000003``). The real 665K's OKVQA records share
VQAv2's COCO images and short-answer suffix, so its image + prompt rules tag both ``vqav2``, and a user names OKVQA's
samples by an id rule before the built-in ones; the twin is read the same way (``conf/scale/tiny.yaml``:
``{source: okvqa, id_prefix: okvqa-}``, then ``{extends: llava_mix665k}``). ``okvqa-`` cannot be mistaken for a
VQAv2 id (``vqav2-``) nor an A-OKVQA one (``aokvqa-``: a prefix match starts at the first character).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from lmm.data.sources import source_counts
from lmm.synth.scenes import COLORS, NUMBER_WORDS, SHAPES, Scene, make_scene, render
from lmm.text.prompts import ONE_SENTENCE_CAPTION, OPTION_LETTER, SHORT_ANSWER

SHORT, LETTER, CAPTION = SHORT_ANSWER, OPTION_LETTER, ONE_SENTENCE_CAPTION
REGION_DESC = "Please provide a short description for this region: {box}."
REGION_BOX = "Please provide the bounding box coordinate of the region this sentence describes: {expr}."
LCS_PROMPTS = ("Render a clear and concise summary of the photo.", "Give a brief description of the image.",
               "Write a terse but informative summary of the picture.", "Share a concise interpretation of the image "
               "provided.", "Describe the image concisely.", "Summarize the visual content of the image.")
DETAIL_PROMPTS = ("Describe the following image.", "Explain the visual content of the image in great detail.",
                  "Can you elaborate on the elements of the picture provided?")
CORNERS = {"circle": 0, "square": 4, "triangle": 3}
# spec §2.2: exact counts of llava_v1_5_mix665k.json; the twin keeps the shares.
IMAGE_DIRS = {"llava_instruct": "coco/train2017", "vqav2": "coco/train2017", "okvqa": "coco/train2017",
              "aokvqa": "coco/train2017", "refcoco": "coco/train2017", "gqa": "gqa/images",
              "ocrvqa": "ocr_vqa/images", "textcaps": "textvqa/train_images", "vg": "vg/VG_100K"}
TEXT_SOURCES = {"ocrvqa", "textcaps"}
# Keys the data twin's stamp and the pretrained twins' caches (lmm.synth.twin_cache). 6: chat without format prompts.
SYNTH_VERSION = 6


def fmt_box(box: list[float]) -> str:
    return "[" + ", ".join(repr(v) for v in box) + "]"


def _at(o) -> str:
    return "in the middle" if o.side == "middle" else f"on the {o.side}"


EXISTENCE = ("Is there a ", "Are there both ")


def existence_first(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A merged conversation with its existence questions moved (in their order) to just before the first turn
    whose question or answer names a shape. Asked after "What color is the circle?", "Is there a circle?" is
    answered by the text alone, and a model learns that shortcut instead of looking for the circle in the image;
    a benchmark asks it alone (measured: GQA-like binary questions 55 % → 75 %, tests/training/test_learning.py)."""
    exist = [qa for qa in pairs if qa[0].startswith(EXISTENCE)]
    rest = [qa for qa in pairs if not qa[0].startswith(EXISTENCE)]
    k = next((i for i, (q, a) in enumerate(rest) if any(s in f"{q} {a}" for s in SHAPES)), len(rest))
    return rest[:k] + exist + rest[k:]


def short_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Every VQAv2-like question of one image (the 665K merges an image's VQA pairs into one conversation):
    the colour and size of each shape, the count, and the presence of each shape kind (yes and no), presence
    before any turn that names a shape (:func:`existence_first`)."""
    pairs = [("How many shapes are there?", str(len(scene.objects)))]
    for o in scene.objects:
        pairs.append((f"What color is the {o.shape} {_at(o)}?", o.color))
        if scene.count(o.shape, o.color) == 1:  # "the green square" must name one object
            pairs.append((f"Is the {o.color} {o.shape} large or small?", o.size))
    pairs += [(f"Is there a {shape} in the image?", "Yes" if shape in scene.shapes() else "No") for shape in SHAPES]
    rng.shuffle(pairs)
    return existence_first(pairs)


def gqa_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    pairs = []
    for o in scene.objects:
        pairs.append((f"What shape is {_at(o)}?", o.shape))
        if scene.count(o.shape, o.color) == 1:
            pairs.append((f"Which side is the {o.color} {o.shape} on?", o.side))
    named = [o for o in scene.objects if scene.count(o.shape, o.color) == 1]
    if len(named) > 1:
        a, b = rng.sample(named, 2)
        rel = "left" if a.column < b.column else "right"
        pairs.append((f"Is the {a.color} {a.shape} to the left or to the right of the {b.color} {b.shape}?", rel))
    rng.shuffle(pairs)
    return pairs


def _conv(image: str | None, turns: list[tuple[str, str]], sid: str) -> dict:
    conv = []
    for k, (q, a) in enumerate(turns):
        conv += [{"from": "human", "value": ("<image>\n" + q) if (k == 0 and image) else q},
                 {"from": "gpt", "value": a}]
    rec = {"id": sid, "conversations": conv}
    if image:
        rec["image"] = image
    return rec


def gen_llava_instruct(scene, rng, size):
    kind = rng.random()
    if kind < 0.4:
        o = rng.choice(scene.objects)
        return [("What objects can you see in the image?", f"I can see {len(scene.objects)} shape"
                 f"{'s' if len(scene.objects) > 1 else ''}: " + scene.caption()[0].lower() + scene.caption()[1:]),
                (f"What color is the {o.shape}?", f"The {o.shape} is {o.color}.")]
    if kind < 0.7:
        extra = f" There {'is' if len(scene.objects) == 1 else 'are'} {NUMBER_WORDS[len(scene.objects)]} " \
                f"shape{'s' if len(scene.objects) > 1 else ''} on a grey background."
        return [(rng.choice(DETAIL_PROMPTS), scene.caption() + extra)]
    o = rng.choice(scene.objects)
    return [(f"Could the {o.color} {o.shape} roll away if the table were tilted? Explain.",
             f"{'Yes' if o.shape == 'circle' else 'No'}, because a {o.shape} "
             f"{'has no corners and can roll' if o.shape == 'circle' else f'has {CORNERS[o.shape]} corners and flat sides'}.")]


def gen_vqav2(scene, rng, size):
    return [(q + "\n" + SHORT, a) for q, a in short_pairs(scene, rng)]


def gen_okvqa(scene, rng, size):
    o = rng.choice(scene.objects)
    return [(f"How many corners does a shape like the {o.color} one have?\n{SHORT}"
             if scene.count(color=o.color) == 1 else f"How many corners does the {o.shape} have?\n{SHORT}",
             str(CORNERS[o.shape]))]


def gen_gqa(scene, rng, size):
    from lmm.synth.bench_gqa import gqa_qa_pairs  # one question generator for GQA train and testdev

    pairs = dict(gqa_pairs(scene, rng)[:2])
    for _ in range(3):
        pairs.update(gqa_qa_pairs(scene, rng))
    return [(q + "\n" + SHORT, a) for q, a in existence_first(list(pairs.items()))]


def gen_ocrvqa(scene, rng, size):
    return [(f"What word is written in the image?\n{SHORT}", scene.text),
            (f"What color is the text?\n{SHORT}", scene.text_color)]


def gen_aokvqa(scene, rng, size):
    o = rng.choice(scene.objects)
    options = rng.sample([c for c in COLORS if c != o.color], 3) + [o.color]
    rng.shuffle(options)
    letters = "ABCD"
    q = f"What color is the {o.shape}?\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(options))
    return [(q + "\n" + LETTER, letters[options.index(o.color)])]


def gen_textcaps(scene, rng, size):
    o = scene.objects[0]
    return [(CAPTION, f'A sign with the word "{scene.text}" above {o.phrase()}.')]


def _region_turns(scene, rng, size, n_max):
    turns = []
    for o in rng.sample(scene.objects, min(len(scene.objects), n_max)):
        box = fmt_box(scene.norm_box(o, size))
        if rng.random() < 0.5:
            turns.append((REGION_DESC.format(box=box), f"{o.size} {o.color} {o.shape}"))
        else:
            turns.append((REGION_BOX.format(expr=f"{o.size} {o.color} {o.shape}"), box))
    return turns


def gen_refcoco(scene, rng, size):
    return _region_turns(scene, rng, size, 3)


def gen_vg(scene, rng, size):
    return _region_turns(scene, rng, size, 3)


def gen_sharegpt(rng):
    turns = []
    for _ in range(rng.randint(1, 3)):
        a, b = rng.randint(0, 5), rng.randint(0, 4)
        if rng.random() < 0.5:
            turns.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
        else:
            turns.append((f"Spell the number {a} as a word.", f"The number {a} is written as {NUMBER_WORDS[a]}."))
    return turns


GENERATORS: dict[str, Callable] = {
    "llava_instruct": gen_llava_instruct, "vqav2": gen_vqav2, "okvqa": gen_okvqa, "gqa": gen_gqa,
    "ocrvqa": gen_ocrvqa, "aokvqa": gen_aokvqa, "textcaps": gen_textcaps, "refcoco": gen_refcoco, "vg": gen_vg,
}


FORMAT_PROMPTS = (SHORT, LETTER, CAPTION)


def without_format_prompt(question: str) -> str:
    """``question`` without a trailing response-format prompt (:data:`FORMAT_PROMPTS`) and the newline before it."""
    for prompt in FORMAT_PROMPTS:
        if question.endswith(prompt):
            return question[: -len(prompt)].rstrip("\n ")
    return question


def described_conversation(rng: random.Random) -> list[tuple[str, str]]:
    """A text-only conversation about a scene described in words where an image would be (the twin world's
    chat data, for pretraining an LLM twin): the scene's caption, then the questions of an image source, asked
    plainly. Vicuna's chat data (ShareGPT) hold plain questions and short answers but never LLaVA's response-format
    prompts ("Answer the question using a single word or phrase.", ...), which LLaVA-1.5 introduced: the twin must
    not know them either, or Table 2's row 2 (the format prompt) would have nothing left to teach."""
    scene = make_scene(rng)
    gen = rng.choice((gen_llava_instruct, gen_vqav2, gen_gqa, gen_okvqa))
    turns = [(without_format_prompt(q), a) for q, a in gen(scene, rng, 64)]
    return [(f"{scene.caption()}\n{turns[0][0]}", turns[0][1]), *turns[1:]]


def write_llava_data(root: str | Path, n_pretrain: int = 512, n_finetune: int = 1500, image_size: int = 64,
                     seed: int = 0, aspects=(1.0, 4 / 3, 3 / 4), distinct_images: int | None = None) -> Path:
    """Write the stage-1 and stage-2 twins under ``root`` (idempotent per parameters). ``distinct_images=K`` renders
    only K images per image folder and lets the records share them round-robin (each record still asks its own
    questions about its image): a full-size twin (665,298 + 558,128 records, ``make rehearse-data``) in minutes."""
    root = Path(root)
    shared = f"-{distinct_images}" if distinct_images else ""
    stamp = root / f".done-v{SYNTH_VERSION}-{n_pretrain}-{n_finetune}-{image_size}-{seed}{shared}"
    if stamp.exists():
        return root
    for old in root.glob(".done-*"):  # other parameters were written here before: their files are replaced
        old.unlink()
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    bar = tqdm(total=n_pretrain + sum(source_counts(n_finetune).values()), mininterval=2, unit="record",
               desc=f"writing the synthetic data twin under {root.name} (once)")
    drawn: dict[str, Scene] = {}

    def image(folder: Path, name: Callable[[int], str], k: int, **scene_args) -> tuple[Scene, str]:
        """Record k's scene and image path (relative to ``folder``): a new image, or a shared one."""
        rel = name(k % distinct_images if distinct_images else k)
        if rel in drawn:
            return drawn[rel], rel
        scene = make_scene(rng, aspects=aspects, **scene_args)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        render(scene, image_size).save(folder / rel, quality=95)
        if distinct_images:
            drawn[rel] = scene
        return scene, rel

    pre_dir = root / "LLaVA-Pretrain"
    pretrain = []
    for k in range(n_pretrain):
        bar.update()
        scene, rel = image(pre_dir / "images", lambda j: f"{j // 1000:05d}/{j:09d}.jpg", k)
        cap = scene.caption()
        pretrain.append(_conv(rel, [(rng.choice(LCS_PROMPTS), cap[0].lower() + cap[1:-1])], f"{k:09d}"))
    (pre_dir / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(pretrain, indent=1))

    mix = []
    for source, n in source_counts(n_finetune).items():
        for k in range(n):
            bar.update()
            sid = f"{source}-{k:06d}"
            if source == "sharegpt":
                mix.append(_conv(None, gen_sharegpt(rng), sid))
                continue
            scene, rel = image(root, lambda j: f"{IMAGE_DIRS[source]}/{source}-{j:06d}.jpg", k,  # noqa: B023
                               text_prob=1.0 if source in TEXT_SOURCES else 0.0)
            mix.append(_conv(rel, GENERATORS[source](scene, rng, image_size), sid))
    random.Random(seed + 1).shuffle(mix)
    (root / "llava_v1_5_mix665k.json").write_text(json.dumps(mix, indent=1))
    bar.close()
    stamp.touch()
    return root


def corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Text of every source (for the tiny tokenizer), the response-format prompts included: the tokenizer covers
    every text of the data, as Llama's covers LLaVA's (only the LLM twin's chat data lack the prompts)."""
    rng = random.Random(seed)
    lines: list[str] = list(LCS_PROMPTS) + list(DETAIL_PROMPTS) + [SHORT, LETTER, CAPTION]
    for _ in range(n):
        scene = make_scene(rng, text_prob=0.5)
        lines.append(scene.caption())
        for gen in GENERATORS.values():
            lines += [f"{q} {a}" for q, a in gen(scene if scene.text or gen not in (gen_ocrvqa, gen_textcaps)
                                                  else make_scene(rng, text_prob=1.0), rng, 336)]
        lines += [f"{q} {a}" for q, a in gen_sharegpt(rng)]
    return lines
