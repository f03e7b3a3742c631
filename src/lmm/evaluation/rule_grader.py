"""A rule-based MM-Vet grader (``judge.kind: rule``): MM-Vet scored offline, without an LLM judge.

The grade of a sample is read from its ground truth by MM-Vet's own syntax: ``a<AND>b`` — every part must appear
in the answer (each part found earns its share, as the official judge's few-shot examples grade ``-1 <AND> -5``
answered with one of the two as 0.5), ``a<OR>b`` — any alternative will do (``<OR>`` binds tighter than
``<AND>``). A part *appears* when its words occur as consecutive words of the answer, both normalised: lower
case, punctuation stripped, number words as digits (VQA's map: ``none``/``zero`` → ``0`` … ``ten`` → ``10``),
articles dropped. The grades are written in the GPT judge's grade-file format
(``{"v1_<n>": {"model": ["rule-v1"], "content": ["<grade>"], "score": [<grade>]}}``), so
:meth:`MMVet.score <lmm.evaluation.benchmarks.mmvet.MMVet.score>` reads them unchanged; its result names the
grader (``judge: ["rule-v1"]``) and warns that the number is not comparable to the paper's GPT-4 grades.

Meant for the synthetic MM-Vet twin (short factual ground truths); on the real MM-Vet, whose ground truths are
often open-ended, a rule grade is a rough lower bound at best. A rule cannot read negation (``not green`` contains
``green``). LLaVA-Bench-in-the-Wild has no rule grader: its score compares the model's answer with GPT-4's by an
LLM judge, and stays judge-only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmm.evaluation.benchmarks.mmvet import MMVet, mmvet_key
from lmm.evaluation.normalize import ARTICLES, NUMBER_MAP

__all__ = ["RULE_GRADER", "grade_mmvet_rules", "normalized_words", "rule_grade"]

RULE_GRADER = "rule-v1"  # the judge model name recorded in the grade file (and in scores.json's `judge`)
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")  # words and numbers (a decimal point stays inside a number)


def normalized_words(text: str) -> list[str]:
    """The words of ``text`` as the rules compare them: lower case, punctuation gone, number words as digits,
    no articles."""
    words = (NUMBER_MAP.get(word, word) for word in _WORD.findall(text.lower()))
    return [word for word in words if word not in ARTICLES]


def _appears(part: list[str], answer: list[str]) -> bool:
    n = len(part)
    return any(answer[i : i + n] == part for i in range(len(answer) - n + 1))


def rule_grade(ground_truth: str, answer: str) -> float:
    """The grade in [0, 1] of ``answer`` against an MM-Vet ground truth: the share of its ``<AND>`` parts found in
    the answer, a part being found when any of its ``<OR>`` alternatives appears (module notes)."""
    words = normalized_words(answer)
    parts = []
    for part in ground_truth.split("<AND>"):
        alternatives = [normalized_words(alt) for alt in part.split("<OR>")]
        alternatives = [alt for alt in alternatives if alt]
        if alternatives:
            parts.append(alternatives)
    if not parts:
        raise ValueError(f"MM-Vet ground truth {ground_truth!r} has no part to look for: a rule cannot grade it")
    found = sum(any(_appears(alt, words) for alt in alternatives) for alternatives in parts)
    return found / len(parts)


def grade_mmvet_rules(data_root: str | Path, predictions: Sequence[Mapping[str, Any]], output: str | Path) -> Path:
    """Grade every answered MM-Vet sample of ``mm-vet/mm-vet.json`` by :func:`rule_grade` and write the grade
    file (one run; a sample without an answer gets no grade, which the official sums count as 0)."""
    answers = {mmvet_key(r["question_id"]): r["text"] for r in predictions}
    grades = {}
    for key, sample in MMVet().metadata(data_root).items():
        if key in answers:
            score = rule_grade(str(sample["answer"]), answers[key])
            grades[key] = {"model": [RULE_GRADER], "content": [str(score)], "score": [score]}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(grades, indent=4), encoding="utf-8")
    return output
