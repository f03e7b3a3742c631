"""VQA answer normalisation and soft accuracy, as the official evaluators do it.

Three normalisers exist in the LLaVA-1.5 evaluation chain and they differ on purpose:

* :func:`eval_ai_answer` — ``EvalAIAnswerProcessor`` of ``llava/eval/m4c_evaluator.py`` (used by LLaVA's
  VQAv2 / VizWiz submission converters and by the TextVQA evaluator): m4c ``word_tokenize`` followed by
  whitespace cleanup, :func:`process_punctuation` and :func:`process_digit_article`.
* :func:`vqa_server_normalize` — steps 3-4 as the VQA server (``vqaEval.py``) applies them, with the official
  ``(\\d)(\\,)(\\d)`` comma test instead of m4c's look-around one.
* the VizWiz server copy, which is :func:`vqa_server_normalize` with :data:`VIZWIZ_CONTRACTIONS` (curly ``’``).

Quirks kept on purpose (see ``shared/spec/eval_scoring.md`` §1): the period regex has a look-behind typo and
receives ``re.UNICODE`` (= 32) as its *count*; the capitalised contraction keys (``Im``, ``Ive``, …) can never
match after lower-casing; ``somebody'd`` maps to ``somebodyd``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_MAP",
    "PUNCTUATION",
    "VIZWIZ_CONTRACTIONS",
    "eval_ai_answer",
    "process_digit_article",
    "process_punctuation",
    "soft_accuracy",
    "strip_whitespace",
    "vqa_server_normalize",
    "vizwiz_server_normalize",
    "word_tokenize",
]

# The 21 characters of the official list; ' : . $ % & * # are deliberately absent.
PUNCTUATION: tuple[str, ...] = tuple(';/[]"{}()=+\\_-><@`,?!')
NUMBER_MAP: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES: tuple[str, ...] = ("a", "an", "the")

_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is a typo for "(?<!" in every copy
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # the official code passes re.UNICODE positionally, i.e. as count=32
_COMMA_STRIP_M4C = re.compile(r"(?<=\d)(\,)+(?=\d)")
_COMMA_STRIP_OFFICIAL = re.compile(r"(\d)(\,)(\d)")


def _table(spec: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in spec.split()]
    return {key: value for key, value in pairs}


# All 120 entries of EvalAIAnswerProcessor.CONTRACTIONS / vqaEval.py contractions (identical lists).
CONTRACTIONS: dict[str, str] = _table(
    """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
    hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
    howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
    it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
    oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
    shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
    somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd
    someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
    somethingd=something'd somethingd've=something'd've something'dve=something'd've somethingll=something'll
    thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's
    theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
    twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
    whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've
    whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll
    whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've
    wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
    y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've youll=you'll
    youre=you're youve=you've
    """
)

# The VizWiz server's copy (Qing Li's VQAEval): same keys in spirit, but many keys and values use the
# typographic apostrophe ’ — so e.g. "didnt" becomes "didn’t" there, not "didn't".
VIZWIZ_CONTRACTIONS: dict[str, str] = _table(
    """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn’t’ve
    couldnt’ve=couldn’t’ve didnt=didn’t doesnt=doesn’t dont=don’t hadnt=hadn’t hadnt’ve=hadn’t’ve
    hadn'tve=hadn’t’ve hasnt=hasn’t havent=haven’t hed=he’d hed’ve=he’d’ve he’dve=he’d’ve hes=he’s howd=how’d
    howll=how’ll hows=how’s Id’ve=I’d’ve I’dve=I’d’ve Im=I’m Ive=I’ve isnt=isn’t itd=it’d itd’ve=it’d’ve
    it’dve=it’d’ve itll=it’ll let’s=let’s maam=ma’am mightnt=mightn’t mightnt’ve=mightn’t’ve
    mightn’tve=mightn’t’ve mightve=might’ve mustnt=mustn’t mustve=must’ve neednt=needn’t notve=not’ve
    oclock=o’clock oughtnt=oughtn’t ow’s’at=’ow’s’at ’ows’at=’ow’s’at ’ow’sat=’ow’s’at shant=shan’t
    shed’ve=she’d’ve she’dve=she’d’ve she’s=she’s shouldve=should’ve shouldnt=shouldn’t
    shouldnt’ve=shouldn’t’ve shouldn’tve=shouldn’t’ve somebody’d=somebodyd somebodyd’ve=somebody’d’ve
    somebody’dve=somebody’d’ve somebodyll=somebody’ll somebodys=somebody’s someoned=someone’d
    someoned’ve=someone’d’ve someone’dve=someone’d’ve someonell=someone’ll someones=someone’s
    somethingd=something’d somethingd’ve=something’d’ve something’dve=something’d’ve somethingll=something’ll
    thats=that’s thered=there’d thered’ve=there’d’ve there’dve=there’d’ve therere=there’re theres=there’s
    theyd=they’d theyd’ve=they’d’ve they’dve=they’d’ve theyll=they’ll theyre=they’re theyve=they’ve
    twas=’twas wasnt=wasn’t wed’ve=we’d’ve we’dve=we’d’ve weve=we've werent=weren’t whatll=what’ll
    whatre=what’re whats=what’s whatve=what’ve whens=when’s whered=where’d wheres=where's whereve=where’ve
    whod=who’d whod’ve=who’d’ve who’dve=who’d’ve wholl=who’ll whos=who’s whove=who've whyll=why’ll
    whyre=why’re whys=why’s wont=won’t wouldve=would’ve wouldnt=wouldn’t wouldnt’ve=wouldn’t’ve
    wouldn’tve=wouldn’t’ve yall=y’all yall’ll=y’all’ll y’allll=y’all’ll yall’d’ve=y’all’d’ve
    y’alld’ve=y’all’d’ve y’all’dve=y’all’d’ve youd=you’d youd’ve=you’d’ve you’dve=you’d’ve youll=you’ll
    youre=you’re youve=you’ve
    """
)


def word_tokenize(text: str) -> str:
    """m4c step 1: lowercase, delete ``,`` and ``?``, split off ``'s``, strip."""
    text = text.lower()
    text = text.replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip()


def strip_whitespace(text: str) -> str:
    """Step 2: newlines and tabs become spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str, *, official_comma_rule: bool = False) -> str:
    """Step 3. Each listed character is deleted when it touches a space in the *original* text (or when the
    text has a digit,digit group anywhere), otherwise replaced by a space; then unprotected periods go."""
    comma = _COMMA_STRIP_OFFICIAL if official_comma_rule else _COMMA_STRIP_M4C
    has_digit_comma = comma.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """Step 4: lowercase, split on whitespace, number words to digits, drop articles, fix contractions."""
    words = [NUMBER_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(contractions.get(word, word) for word in words)


def eval_ai_answer(text: str) -> str:
    """LLaVA's ``EvalAIAnswerProcessor()(text)``: steps 1-4 with the m4c comma rule."""
    text = strip_whitespace(word_tokenize(text))
    return process_digit_article(process_punctuation(text))


def vqa_server_normalize(text: str) -> str:
    """Steps 3-4 as ``vqaEval.py`` applies them (official comma rule); the caller does step 2."""
    return process_digit_article(process_punctuation(text, official_comma_rule=True))


def vizwiz_server_normalize(text: str) -> str:
    """The VizWiz server's prediction normalisation: steps 2-4 with the ``’`` contraction table."""
    text = process_punctuation(strip_whitespace(text), official_comma_rule=True)
    return process_digit_article(text, VIZWIZ_CONTRACTIONS)


def soft_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy: mean over the leave-one-out subsets (removing answers *by index*) of
    ``min(1, #matches / 3)``. With k matching answers out of 10 this is 0, .3, .6, .9, 1 for k = 0..≥4."""
    if not gt_answers:
        raise ValueError("soft accuracy needs at least one ground-truth answer")
    matches = [answer == prediction for answer in gt_answers]
    total = sum(matches)
    return sum(min(1.0, (total - hit) / 3.0) for hit in matches) / len(gt_answers)
