"""§1 normaliser and §2 soft-accuracy vectors of shared/spec/eval_scoring.md."""

from __future__ import annotations

import pytest

from lmm.evaluation.normalize import (
    CONTRACTIONS,
    PUNCTUATION,
    VIZWIZ_CONTRACTIONS,
    eval_ai_answer,
    process_digit_article,
    process_punctuation,
    soft_accuracy,
    strip_whitespace,
    vqa_server_normalize,
)

M4C_VECTORS = [
    ("The Cat's toy", "cat 's toy"),
    ("1,000", "1000"),
    ("Ten", "10"),
    ("none", "0"),
    ("Two dogs", "2 dogs"),
    ("A dog.", "dog"),
    ("an apple", "apple"),
    ("isnt", "isn't"),
    ("3.5", "3.5"),
    ("End.", "end"),
    ("e.g.", "eg"),
    ("U.S.A.", "usa"),
    ("12:00 p.m.", "12:00 pm"),
    ("t-shirt", "t shirt"),
    ("t - shirt", "t shirt"),
    ("coca-cola", "coca cola"),
    ("left/right", "left right"),
    ("yes!", "yes"),
    ("$5", "$5"),
    ("3:30", "3:30"),
    ("Yes, it is.", "yes it is"),
    ("(a)", ""),
]


@pytest.mark.parametrize(("text", "expected"), M4C_VECTORS)
def test_eval_ai_answer_vectors(text, expected):
    assert eval_ai_answer(text) == expected


@pytest.mark.parametrize(("text", "expected"), M4C_VECTORS)
def test_official_steps_2_to_4_agree_except_possessive(text, expected):
    official = vqa_server_normalize(strip_whitespace(text))
    if text == "The Cat's toy":
        assert official == "cat's toy"  # no word_tokenize on the server: "'s" stays attached
    elif text == "1,000":
        assert official == "1000"  # digit,digit: all punctuation deleted
    else:
        assert official == expected


def test_tables_are_complete_and_quirky():
    assert len(PUNCTUATION) == 21 and not set("':.$%&*#") & set(PUNCTUATION)
    assert len(CONTRACTIONS) == 120 and len(VIZWIZ_CONTRACTIONS) == 120
    assert CONTRACTIONS["somebody'd"] == "somebodyd"
    # capitalised keys can never match after lower-casing
    assert process_digit_article("Im Ive") == "im ive"
    assert VIZWIZ_CONTRACTIONS["didnt"] == "didn’t"
    ascii_vizwiz = {k.replace("’", "'"): v.replace("’", "'") for k, v in VIZWIZ_CONTRACTIONS.items()}
    assert ascii_vizwiz == CONTRACTIONS


def test_period_strip_count_quirk():
    # re.UNICODE (=32) is passed as `count`: only the first 32 bare periods are removed
    assert process_punctuation("." * 40) == "." * 8


def test_comma_rules_differ():
    # m4c deletes punctuation on digit,digit with a look-around; the official regex needs exactly d,d
    assert process_punctuation("1,,2 a-b") == "12 ab"
    assert process_punctuation("1,,2 a-b", official_comma_rule=True) == "1  2 a b"


@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_by_matching_count(k, expected):
    gts = ["x"] * k + ["y"] * (10 - k)
    assert soft_accuracy("x", gts) == pytest.approx(expected)


def test_soft_accuracy_removes_by_index():
    assert soft_accuracy("yes", ["yes"] * 10) == 1.0  # removing by value would give 0


def test_soft_accuracy_needs_answers():
    with pytest.raises(ValueError):
        soft_accuracy("x", [])
