"""Reading and writing LLaVA answer JSONL files.

An answer record is ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}`` (one JSON
object per line), exactly what LLaVA's ``model_vqa*.py`` runners write. The reader never guesses: it keeps the
records in file order, counts lines that are not JSON objects with a ``question_id`` and a string ``text``, and
leaves it to each benchmark to apply what its official script does with duplicates and missing questions
(see :func:`index_by`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmm.common import atomic_write

__all__ = [
    "PredictionFile",
    "PredictionsError",
    "as_prediction_file",
    "check_record",
    "index_by",
    "make_answer_record",
    "not_utf8",
    "read_predictions",
    "write_answers",
]

REQUIRED_KEYS = ("question_id", "text")


class PredictionsError(ValueError):
    """A predictions file cannot be scored the way the official script would score it."""


@dataclass
class PredictionFile:
    """Valid records in file order plus what was wrong with the rest."""

    records: list[dict[str, Any]]
    n_lines: int = 0
    unparsable: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)
    path: Path | None = None

    @property
    def n_unparsable(self) -> int:
        return len(self.unparsable)

    def describe_unparsable(self, limit: int = 5) -> str:
        shown = "; ".join(f"line {line}: {why}" for line, why in self.unparsable[:limit])
        more = f" (and {self.n_unparsable - limit} more)" if self.n_unparsable > limit else ""
        return (
            f"{self.n_unparsable} unparsable prediction line(s) in {self.path or '<records>'}: {shown}{more}"
        )


def not_utf8(data: bytes, err: UnicodeDecodeError) -> str:
    """What is wrong with ``data`` at ``err``, with the column of the first bad byte on its line."""
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return f"not UTF-8 text (byte 0x{data[err.start]:02x} at column {column})"


def check_record(obj: Any) -> str | None:
    """What makes ``obj`` not an answer record (``None`` when it is one)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        return f"missing key(s) {missing}"
    if not isinstance(obj["text"], str):
        return f"'text' must be a string, got {type(obj['text']).__name__}"
    if not isinstance(obj["question_id"], (str, int)) or isinstance(obj["question_id"], bool):
        return f"'question_id' must be a string or an integer, got {obj['question_id']!r}"
    return None


def read_predictions(path: str | os.PathLike[str]) -> PredictionFile:
    """Read an answer JSONL file. Blank lines are ignored; every other line that is not a valid record (not
    UTF-8, not JSON, not an answer object) is counted in ``unparsable`` with its line number and the reason. A
    missing file raises :class:`PredictionsError`."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file not found: {path}")
    result = PredictionFile(records=[], path=path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            result.n_lines = number
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                result.unparsable.append((number, not_utf8(raw, err)))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                result.unparsable.append((number, f"invalid JSON ({err.msg})"))
                continue
            problem = check_record(obj)
            if problem:
                result.unparsable.append((number, problem))
            else:
                result.records.append(obj)
    return result


def as_prediction_file(predictions: PredictionFile | Sequence[Mapping[str, Any]] | str | os.PathLike[str]):
    """Accept a :class:`PredictionFile`, a path, or already-parsed records (validated the same way)."""
    if isinstance(predictions, PredictionFile):
        return predictions
    if isinstance(predictions, (str, os.PathLike)):
        return read_predictions(predictions)
    result = PredictionFile(records=[], n_lines=len(predictions))
    for number, obj in enumerate(predictions, start=1):
        problem = check_record(obj)
        if problem:
            result.unparsable.append((number, problem))
        else:
            result.records.append(dict(obj))
    return result


def index_by(
    records: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Hashable]
) -> tuple[dict[Hashable, Mapping[str, Any]], list[Hashable]]:
    """``{key(r): r}`` with the official scripts' dict semantics (the last record wins). Also returns the keys
    that occurred more than once, in first-seen order, so callers can count and report them."""
    index: dict[Hashable, Mapping[str, Any]] = {}
    duplicates: dict[Hashable, None] = {}
    for record in records:
        k = key(record)
        if k in index:
            duplicates[k] = None
        index[k] = record
    return index, list(duplicates)


def make_answer_record(
    question: Any, text: str, model_id: str, answer_id: str | None = None, metadata: dict | None = None
) -> dict[str, Any]:
    """The record LLaVA's runner would write for ``question`` (a :class:`~lmm.evaluation.benchmarks.base.
    Question`): its ``answer_prompt`` goes into ``prompt`` and benchmark-specific fields (e.g. MMBench's
    ``options``) are copied from ``question.extra['record_fields']``."""
    record = {
        "question_id": question.question_id,
        "prompt": question.answer_prompt,
        "text": text,
        "answer_id": answer_id or uuid.uuid4().hex[:22],
        "model_id": model_id,
        "metadata": metadata or {},
    }
    record.update(question.extra.get("record_fields", {}))
    return record


def _answer_lines(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for record in records:
        problem = check_record(record)
        if problem:
            raise PredictionsError(f"refusing to write an invalid answer record ({problem}): {record!r}")
        yield json.dumps(record, ensure_ascii=False) + "\n"


def write_answers(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], append: bool = False):
    """Write answer records as JSONL (one object per line, UTF-8, non-ASCII kept as is). Returns the count.
    Appended records are flushed to disk before returning; a new file replaces ``path`` atomically."""
    path = Path(path)
    count = 0
    if append:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            for line in _answer_lines(records):
                handle.write(line)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        return count
    with atomic_write(path) as handle:
        for line in _answer_lines(records):
            handle.write(line)
            count += 1
    return count
