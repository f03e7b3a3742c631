"""MMBench dev (EN 20230712 / CN 20231003; 7B 64.3 / 58.3), CircularEval.

Files: ``mmbench/mmbench_dev_20230712.tsv`` and ``mmbench_cn/mmbench_dev_cn_20231003.tsv`` (LLaVA's
``mmbench_cn.sh``; ``mmbench/mmbench_dev_cn_20231003.tsv`` as in its docs is accepted too). Columns ``index,
question, hint, A-D, answer, category, l2-category, image (base64), ...``; the circular copies are rows
``k·1e6 + i`` with shifted options. TSV cells are read as ``pandas.read_table`` would: its default NA strings
(``''``, ``NA``, ``None``, ``nan``, …) are missing values.

Prompt (``model_vqa_mmbench.py --single-pred-prompt``): ``[hint\\n]question`` + ``\\nA. opt`` up to the first
missing option + suffix. LLaVA uploads to OpenCompass; the server's rule (VLMEvalKit / lmms-eval
``MMBench_Evaluator``) is reproduced heuristic-only: a group of rows with the same ``index % 1e6`` is right
when every row's answer is inferred by ``can_infer`` and correct. Rows the heuristics cannot read would go to
an LLM extractor on the server; here they count as wrong and are reported (``n_uninferable_groups``) — exact
for LLaVA-1.5, whose answers are bare letters.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from lmm.evaluation.answers import index_by
from lmm.evaluation.benchmarks.base import (
    MULTIPLE_CHOICE_SUFFIX,
    Benchmark,
    BenchmarkDataError,
    Question,
    ScoreContext,
    find_file,
    read_text,
)

__all__ = [
    "MMBench",
    "MMBenchCircular",
    "can_infer",
    "can_infer_option",
    "can_infer_text",
    "convert_mmbench_for_submission",
    "read_mmbench_tsv",
]

CN_SUFFIX = "\n请直接回答选项字母。"
LETTERS = ("A", "B", "C", "D")
PANDAS_NA = frozenset(
    [
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)
_AFFIXES = (
    ("", "."),
    ("", ","),
    ("", ":"),
    ("", ")"),
    ("", ")."),
    ("(", ")"),
    ("(", ")."),
    (":", ""),
    (":", ","),
    (":", "."),
    (":", ")"),
    (":", ")."),
)
CIRCULAR = 1_000_000


def is_missing(value: str | None) -> bool:
    """``pd.isna`` after ``read_table`` plus ``model_vqa_mmbench.is_none`` (``'nan'`` / ``'none'``, any case)."""
    return value is None or value in PANDAS_NA or value.lower() in ("nan", "none")


def can_infer_option(answer: str, choices: str = "ABCDE") -> str | None:
    """The option-letter heuristic: a single bare letter among the whitespace tokens (unless ``A`` may be an
    article: ``'A' in tokens and len(tokens) > 3``), else a single letter with one of the affixes."""
    if "Failed to obtain answer via API" in answer:
        return None
    splits = [x.strip() for x in answer.split()]

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(1 for c in choices if prefix + c + suffix in splits)

    if count() == 1 and not ("A" in splits and len(splits) > 3):
        return next(c for c in choices if c in splits)
    for prefix, suffix in _AFFIXES:
        if count(prefix, suffix) == 1:
            return next(c for c in choices if prefix + c + suffix in splits)
    return None


def can_infer_text(answer: str, options: Mapping[str, str]) -> str | None:
    """The letter of the only option whose lower-cased text occurs in the lower-cased answer."""
    answer = answer.lower()
    hits = [letter for letter, text in options.items() if str(text).lower() in answer]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, options: Mapping[str, str]) -> str | None:
    return can_infer_option(answer) or can_infer_text(answer, options)


def read_mmbench_tsv(path: Path) -> list[dict[str, str | None]]:
    """Rows of an MMBench TSV with pandas' NA semantics for every cell (missing → ``None``)."""
    if not path.is_file():
        raise BenchmarkDataError(f"file not found: {path}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t")
    header = next(reader, [])
    rows = [{k: (None if v in PANDAS_NA else v) for k, v in zip(header, line)} for line in reader if line]
    for column in ("index", "question", "answer", "A", "B", "image"):
        if column not in header:
            raise BenchmarkDataError(f"{path}: missing column {column!r}")
    return rows


UPLOAD_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def convert_mmbench_for_submission(
    rows: Sequence[Mapping[str, str | None]], records: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[list[Any]], int]:
    """LLaVA's ``convert_mmbench_for_submission.py`` (the OpenCompass upload): the TSV without its ``hint``,
    ``category``, ``source``, ``image``, ``comment`` and ``l2-category`` columns, ``prediction`` inserted as the
    7th column and filled from the answers matched on ``index`` (the last answer of a row wins; a row without one
    stays empty). Returns the header, the rows (``index`` as a number, as pandas reads it) and the number of rows
    without an answer."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    kept = [key for key in header if key not in UPLOAD_DROPPED]
    kept.insert(min(6, len(kept)), "prediction")
    texts, _ = index_by(records, lambda r: int(r["question_id"]))
    table, blank = [], 0
    for row in rows:
        record = texts.get(int(row["index"]))
        blank += record is None
        values = {**row, "index": int(row["index"]), "prediction": None if record is None else record["text"]}
        table.append([values.get(key) for key in kept])
    return kept, table, blank


class MMBenchCircular(torchmetrics.Metric):
    """CircularEval accuracy (×100), overall and per ``category`` / ``l2-category`` of the main question.
    ``update(preds, answers, options, indices)`` takes raw texts, gold letters, ``{letter: text}`` per row and
    the TSV ``index``; per-row outcomes (1 right, 0 wrong, -1 uninferable) are cat-reduced and grouped by
    ``index % 1e6`` in ``compute``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: Mapping[int, tuple[str | None, str | None]] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.categories = dict(categories or {})
        self.add_state("groups", [], dist_reduce_fx="cat")
        self.add_state("outcomes", [], dist_reduce_fx="cat")

    def update(
        self,
        preds: Sequence[str],
        answers: Sequence[str],
        options: Sequence[Mapping[str, str]],
        indices: Sequence[int],
    ) -> None:
        outcomes = []
        for text, answer, opts in zip(preds, answers, options, strict=True):
            letter = can_infer(text, opts)
            outcomes.append(-1 if letter is None else int(letter == answer))
        self.groups.append(
            torch.tensor([int(i) % CIRCULAR for i in indices], dtype=torch.long, device=self.device)
        )
        self.outcomes.append(torch.tensor(outcomes, dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, Any]:
        if not len(self.groups):
            return {"accuracy": None, "n_groups": 0}
        rows: dict[int, list[int]] = defaultdict(list)
        for group, outcome in zip(dim_zero_cat(self.groups).tolist(), dim_zero_cat(self.outcomes).tolist()):
            rows[group].append(outcome)
        hits = {g: int(all(o == 1 for o in v)) for g, v in rows.items()}
        uninferable = sum(1 for v in rows.values() if -1 in v and 0 not in v)
        n_rows = sum(len(v) for v in rows.values())
        result: dict[str, Any] = {
            "accuracy": 100.0 * sum(hits.values()) / len(hits),
            "n_groups": len(hits),
            "n_uninferable_groups": uninferable,
            "row_accuracy": 100.0 * sum(o == 1 for v in rows.values() for o in v) / n_rows,
        }
        for position, key in ((0, "per_category"), (1, "per_l2_category")):
            buckets: dict[str, list[int]] = defaultdict(list)
            for group, hit in hits.items():
                name = self.categories.get(group, (None, None))[position]
                if name is not None:
                    buckets[name].append(hit)
            if buckets:
                result[key] = {k: 100.0 * sum(v) / len(v) for k, v in sorted(buckets.items())}
        return result


@dataclass(frozen=True)
class MMBench(Benchmark):
    name: str = "mmbench"
    max_new_tokens: int = 1024
    lang: str = "en"

    TSV_FILES: ClassVar[dict[str, tuple[str, ...]]] = {
        "en": ("mmbench/mmbench_dev_20230712.tsv",),
        "cn": ("mmbench_cn/mmbench_dev_cn_20231003.tsv", "mmbench/mmbench_dev_cn_20231003.tsv"),
    }

    def __post_init__(self) -> None:
        if self.lang not in self.TSV_FILES:
            raise ValueError(f"mmbench lang must be one of {sorted(self.TSV_FILES)}, got {self.lang!r}")

    def question_file(self, data_root: str | Path) -> Path:
        """The TSV (the first of ``TSV_FILES[lang]`` that exists)."""
        return find_file(Path(data_root), self.TSV_FILES[self.lang], f"{self.name} TSV")

    def rows(self, data_root: str | Path) -> list[dict[str, str | None]]:
        return read_mmbench_tsv(self.question_file(data_root))

    def questions(self, data_root: str | Path) -> list[Question]:
        rows = self.rows(data_root)
        images = {row["index"]: row["image"] for row in rows}
        suffix = CN_SUFFIX if self.lang == "cn" else MULTIPLE_CHOICE_SUFFIX
        result = []
        for row in rows:
            options = []
            for letter in LETTERS:  # up to the first missing option, as the runner does
                if is_missing(row.get(letter)):
                    break
                options.append(row[letter])
            text = row["question"] or ""
            if not is_missing(row.get("hint")):
                text = row["hint"] + "\n" + text
            for letter, option in zip(LETTERS, options):
                text += f"\n{letter}. {option}"
            image = row["image"] or ""
            if len(image) <= 64 and image in images:  # VLMEvalKit-style reference to another row's image
                image = images[image]
            result.append(
                Question(
                    question_id=int(row["index"]),
                    prompt=text + suffix,
                    image_b64=image,
                    category=row.get("category"),
                    answer_prompt=text,
                    extra={
                        "answer": row["answer"],
                        "options": _row_options(row),
                        "l2_category": row.get("l2-category"),
                        "record_fields": {
                            "round_id": 0,
                            "options": options,
                            "option_char": list(LETTERS[: len(options)]),
                        },
                    },
                )
            )
        return result

    def metric(self, data_root: str | Path | None = None) -> MMBenchCircular:
        return MMBenchCircular(_categories(self.rows(data_root)) if data_root is not None else None)

    def _score(self, records, data_root: Path, judgments, ctx: ScoreContext) -> dict[str, Any]:
        rows = self.rows(data_root)
        texts, duplicates = index_by(records, lambda r: int(r["question_id"]))
        ctx.duplicates(duplicates)
        known = {int(row["index"]) for row in rows}
        ctx.extras(sum(1 for qid in texts if qid not in known))
        missing = [int(row["index"]) for row in rows if int(row["index"]) not in texts]
        ctx.count("n_questions", len(rows))
        ctx.count(
            "n_missing", len(missing), "{n} row(s) have no prediction; their circular groups count as wrong"
        )
        columns: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            index = int(row["index"])
            columns["preds"].append(texts[index]["text"] if index in texts else "")
            columns["answers"].append(row["answer"])
            columns["options"].append(_row_options(row))
            columns["indices"].append(index)
        result = self._feed(MMBenchCircular(_categories(rows)), columns)
        if result.get("n_uninferable_groups"):
            ctx.warn(
                f"{result['n_uninferable_groups']} group(s) hold answers no heuristic can read; the server would ask "
                "an LLM to extract them, here they count as wrong (heuristic-only)"
            )
        return {"score": result.pop("accuracy"), "lang": self.lang, **result}


def _row_options(row: Mapping[str, str | None]) -> dict[str, str]:
    """``build_choices``: every option A-D that is not NA (the evaluator skips missing ones, it does not stop)."""
    return {letter: row[letter] for letter in LETTERS if row.get(letter) is not None}


def _categories(rows: Sequence[Mapping[str, str | None]]) -> dict[int, tuple[str | None, str | None]]:
    return {
        int(row["index"]): (row.get("category"), row.get("l2-category"))
        for row in rows
        if int(row["index"]) < CIRCULAR
    }
