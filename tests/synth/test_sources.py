"""The training-source twins: official layout, the real source rules tag them, exact format prompts, determinism."""

import hashlib
import json
import random
import re
from collections import Counter

from lmm.data.records import parse_record
from lmm.data.sources import SourceTagger
from lmm.synth.scenes import SHAPES, Obj, Scene, make_scene
from lmm.synth.sources import (
    EXISTENCE,
    LETTER,
    SHORT,
    SYNTH_VERSION,
    corpus,
    described_conversation,
    existence_first,
    gen_gqa,
    gen_vqav2,
    source_counts,
    write_llava_data,
)
from lmm.text.prompts import ONE_SENTENCE_CAPTION, OPTION_LETTER, SHORT_ANSWER


def digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_rules_and_prompts(tmp_path):
    root = write_llava_data(tmp_path / "a", n_pretrain=8, n_finetune=120, image_size=48)
    pre = json.loads((root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json").read_text())
    assert len(pre) == 8 and all((root / "LLaVA-Pretrain" / "images" / r["image"]).is_file() for r in pre)
    mix = json.loads((root / "llava_v1_5_mix665k.json").read_text())
    assert len(mix) == sum(source_counts(120).values())
    records = [parse_record(r) for r in mix]
    tagged = Counter(SourceTagger("llava_mix665k")(r) for r in records)
    expected = source_counts(120)
    expected["vqav2"] += expected.pop("okvqa")  # the real rules cannot tell OKVQA from VQAv2 either
    assert tagged == expected
    by_id = {r.id.split("-")[0]: r for r in records}
    assert all(h.endswith(SHORT) for h, _ in by_id["vqav2"].turns + by_id["gqa"].turns + by_id["ocrvqa"].turns)
    assert by_id["aokvqa"].turns[0][0].endswith(LETTER) and re.fullmatch("[A-D]", by_id["aokvqa"].turns[0][1])
    assert by_id["textcaps"].turns[0][0].endswith("Provide a one-sentence caption for the provided image.")
    assert not by_id["sharegpt"].images
    for r in records:
        for img in r.images:
            assert (root / img).is_file()


def test_region_boxes_are_relative_to_the_padded_square():
    wide = Scene((Obj("square", "red", "large", 0.5, 0.5, 0.25, 1),), (200, 200, 200), aspect=2.0)
    # A 336 × 168 canvas padded to 336 × 336 (84 px bands above and below): the 42-px half-extent square.
    x1, y1, x2, y2 = wide.norm_box(wide.objects[0], 336)
    assert (x1, x2) == (0.38, 0.62) and (y1, y2) == (0.38, 0.62)
    assert all(v == round(v, 2) for v in (x1, y1, x2, y2))


def test_same_seed_same_bytes(tmp_path):
    a = write_llava_data(tmp_path / "a", n_pretrain=6, n_finetune=60, image_size=40, seed=3)
    b = write_llava_data(tmp_path / "b", n_pretrain=6, n_finetune=60, image_size=40, seed=3)
    assert digest(a) == digest(b)
    c = write_llava_data(tmp_path / "c", n_pretrain=6, n_finetune=60, image_size=40, seed=4)
    assert digest(a) != digest(c)


def test_vqa_twins_merge_an_images_questions_into_one_conversation():
    """As the 665K mixture (paper A.2): every VQAv2-like sample asks all of its image's questions, presence of
    every shape kind included (yes and no), each answer derivable from the scene."""
    rng = random.Random(3)
    for _ in range(20):
        scene = make_scene(rng)
        pairs = gen_vqav2(scene, rng, 64)
        turns = dict(pairs)
        assert len(turns) == len(pairs)  # no question asked twice (each names one object)
        for shape in SHAPES:
            q = f"Is there a {shape} in the image?\n{SHORT}"
            assert turns[q] == ("Yes" if shape in scene.shapes() else "No")
        assert turns[f"How many shapes are there?\n{SHORT}"] == str(len(scene.objects))
        unique = sum(scene.count(o.shape, o.color) == 1 for o in scene.objects)
        assert len(turns) == 4 + len(scene.objects) + unique
        gqa = gen_gqa(scene, rng, 64)
        assert len(gqa) >= 2 and len({q for q, _ in gqa}) == len(gqa)
        for conv in (pairs, gqa):  # no existence question can be answered from an earlier turn's text
            for k, (q, _) in enumerate(conv):
                if q.startswith(EXISTENCE):
                    earlier = " ".join(f"{q2.split(chr(10))[0]} {a2}" for q2, a2 in conv[:k] if not q2.startswith(EXISTENCE))
                    assert not any(shape in earlier for shape in SHAPES), (q, conv)


def test_existence_questions_go_before_the_first_turn_that_names_a_shape():
    pairs = [("How many shapes are there?", "2"), ("What color is the circle?", "red"), ("Is there a square?", "No"),
             ("What shape is on the left?", "circle"), ("Are there both a circle and a square?", "no")]
    assert existence_first(pairs) == [pairs[0], pairs[2], pairs[4], pairs[1], pairs[3]]
    assert existence_first(pairs[:1]) == pairs[:1]


FORMAT_PROMPTS = (ONE_SENTENCE_CAPTION, OPTION_LETTER, SHORT_ANSWER)


def test_chat_corpus_has_no_response_format_prompt():
    """The LLM twin's chat data (Vicuna's analogue) never shows LLaVA's format prompts, yet keeps the questions and
    short answers of every image source: row 2 of Table 2 (the prompt) must have something left to teach."""
    rng = random.Random(0)
    convs = [described_conversation(rng) for _ in range(300)]
    text = "\n".join(f"{q}\n{a}" for conv in convs for q, a in conv)
    assert not [p for p in FORMAT_PROMPTS if p in text]
    questions = [q.split("\n")[-1] for conv in convs for q, _ in conv]
    assert "How many shapes are there?" in questions and any(q.startswith("What shape is") for q in questions)
    assert any(q.startswith("How many corners") for q in questions)  # OKVQA-like
    assert {a for conv in convs for _, a in conv} >= {"Yes", "No", "red"}  # short answers, as ordinary chat has


def test_tokenizer_corpus_still_holds_the_format_prompts():
    text = "\n".join(corpus(0, n=20))
    assert all(text.count(p) > 1 for p in FORMAT_PROMPTS)


def test_synth_version_keys_the_chat_corpus():
    """The LLM twin's cache key holds SYNTH_VERSION (lmm.synth.twin_cache), not the corpus: a twin cached from the
    corpus with format prompts (version ≤ 5) must not be found for the corpus without them."""
    assert SYNTH_VERSION >= 6
