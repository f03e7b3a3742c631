"""Templates (exact strings) and label masks, checked against LLaVA's own algorithm on a legacy Llama tokenizer."""

import pytest
from reference_llava import (
    IGNORE_INDEX,
    official_llama_2,
    official_plain,
    official_prompt_llama_2,
    official_prompt_v1,
    official_v1,
)

from lmm.text.templates import LLAVA_LLAMA_2_SYSTEM, VICUNA_SYSTEM, get_template
from lmm.text.tokenize import IMAGE_TOKEN_INDEX, tokenize_conversation, tokenize_prompt

IMAGE_MULTI = [("<image>\nWhat color is the circle?\nAnswer the question using a single word or phrase.", "red"),
               ("How many shapes are there?\nAnswer the question using a single word or phrase.", "2"),
               ("Describe it.", "A red circle on the left and a blue square on the right.")]
TEXT_MULTI = [("What is 3 plus 4?", "3 plus 4 is 7."), ("Spell the number 2 as a word.", "two")]
IMAGE_ONE = [("<image>\nWhat is in the image?", "There is a green triangle.")]
CASES = {"image_multi_turn": (IMAGE_MULTI, True), "text_only_multi_turn": (TEXT_MULTI, False),
         "image_single_turn": (IMAGE_ONE, True)}


def test_vicuna_v1_exact_strings():
    t = get_template("vicuna_v1")
    rendered = "".join(s.text for s in t.render(IMAGE_MULTI))
    assert rendered == official_prompt_v1(VICUNA_SYSTEM, IMAGE_MULTI)
    assert rendered.startswith("A chat between a curious user and an artificial intelligence assistant. The "
                               "assistant gives helpful, detailed, and polite answers to the user's questions. "
                               "USER: <image>\nWhat color")
    assert t.generation_prompt([], "<image>\nQ?") == VICUNA_SYSTEM + " USER: <image>\nQ? ASSISTANT:"


def test_llama_2_exact_strings():
    t = get_template("llava_llama_2")
    rendered = "".join(s.text for s in t.render(TEXT_MULTI))
    assert rendered == official_prompt_llama_2(LLAVA_LLAMA_2_SYSTEM, TEXT_MULTI)
    assert rendered.startswith("[INST] <<SYS>>\nYou are a helpful language and vision assistant.")
    assert get_template("llama_2").system.startswith("You are a helpful, respectful and honest assistant.")


def test_plain_template():
    segs = get_template("plain").render([("<image>\nDescribe the image concisely.", "A red circle.")])
    assert "".join(s.text for s in segs) == "<image>A red circle.\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_vicuna_labels_equal_official(case, tiny_tokenizer):
    turns, has_image = CASES[case]
    ours = tokenize_conversation(turns, get_template("vicuna_v1"), tiny_tokenizer)
    ids, labels = official_v1(official_prompt_v1(VICUNA_SYSTEM, turns), tiny_tokenizer, has_image)
    assert ours.input_ids == ids
    assert ours.labels == labels
    assert ours.n_targets > 0
    assert (IMAGE_TOKEN_INDEX in ours.input_ids) == has_image
    # Only the replies and their "</s>" are trained.
    trained = tiny_tokenizer.decode([x for x in ours.labels if x != IGNORE_INDEX])
    assert trained.replace(" ", "") == "".join(a + "</s>" for _, a in turns).replace(" ", "")


@pytest.mark.parametrize("case", sorted(CASES))
def test_llama_2_labels_equal_official(case, tiny_tokenizer):
    turns, has_image = CASES[case]
    ours = tokenize_conversation(turns, get_template("llava_llama_2"), tiny_tokenizer)
    ids, labels = official_llama_2(official_prompt_llama_2(LLAVA_LLAMA_2_SYSTEM, turns), tiny_tokenizer, has_image)
    assert ours.input_ids == ids
    assert ours.labels == labels
    assert ours.n_targets > 0


def test_plain_labels_equal_official(tiny_tokenizer):
    caption = "A red circle on the left and a blue square on the right."
    ours = tokenize_conversation([("<image>\nDescribe.", caption)], get_template("plain"), tiny_tokenizer)
    ids, labels = official_plain(caption, tiny_tokenizer)
    assert ours.input_ids == ids and ours.labels == labels
    assert ours.input_ids[:2] == [tiny_tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert tiny_tokenizer.eos_token_id not in ours.input_ids  # stage 1 trains caption + "\n", no EOS


def test_offsets_survive_where_official_arithmetic_breaks(tiny_tokenizer):
    """A non-legacy tokenizer splits "</s>USER" differently; LLaVA's arithmetic then masks whole samples
    ("tokenization mismatch"), while offset-based labels still cover exactly the replies."""
    from transformers import AutoTokenizer

    path = tiny_tokenizer.name_or_path
    nonlegacy = AutoTokenizer.from_pretrained(path, legacy=False)
    nonlegacy.pad_token = nonlegacy.unk_token
    _, official_labels = official_v1(official_prompt_v1(VICUNA_SYSTEM, TEXT_MULTI), nonlegacy, False)
    assert all(x == IGNORE_INDEX for x in official_labels)  # the official path loses the whole sample
    ours = tokenize_conversation(TEXT_MULTI, get_template("vicuna_v1"), nonlegacy)
    trained = nonlegacy.decode([x for x in ours.labels if x != IGNORE_INDEX])
    assert trained.replace(" ", "") == "".join(a + "</s>" for _, a in TEXT_MULTI).replace(" ", "")


def test_generation_prompt_ids(tiny_tokenizer):
    t = get_template("vicuna_v1")
    ids = tokenize_prompt(t.generation_prompt([], "<image>\nWhat color?"), tiny_tokenizer)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids[0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.decode(ids[ids.index(IMAGE_TOKEN_INDEX) + 1:]).strip() == "What color? ASSISTANT:"
