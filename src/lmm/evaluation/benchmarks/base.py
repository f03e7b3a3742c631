"""The common shape of a benchmark: its questions, its metric, and its official-exact ``score``.

``data_root`` is LLaVA's ``playground/data/eval`` directory; each benchmark reads its files at the paths
LLaVA's ``scripts/v1_5/eval/*.sh`` use (listed per module and in ``docs/evaluation.md``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torchmetrics

from lmm.common import UnsafePathError, inside
from lmm.data.images import ImageLoadError, load_image
from lmm.evaluation.answers import PredictionFile, PredictionsError, as_prediction_file, not_utf8
from lmm.text.prompts import OPTION_LETTER, SHORT_ANSWER

__all__ = [
    "Benchmark",
    "BenchmarkDataError",
    "JudgeNotConfiguredError",
    "Question",
    "QuestionImageError",
    "ScoreContext",
    "find_file",
    "image_path",
    "loader_questions",
    "read_json",
    "read_jsonl",
    "read_text",
    "stable_id",
]

SHORT_ANSWER_SUFFIX = "\n" + SHORT_ANSWER
MULTIPLE_CHOICE_SUFFIX = "\n" + OPTION_LETTER
# The file lmm.synth writes into every benchmark folder it builds: a folder holding it is a synthetic twin.
SYNTHETIC_MARKER = ".lmm-synthetic"


class BenchmarkDataError(FileNotFoundError):
    """A benchmark file is missing or does not have the official format."""


class QuestionImageError(BenchmarkDataError):
    """A question's image is missing or cannot be decoded (the message names the question and the file)."""


class JudgeNotConfiguredError(RuntimeError):
    """A judge-scored benchmark was asked for a score without judgments; nothing is ever faked."""


@dataclass
class Question:
    """One evaluation prompt.

    ``prompt`` is the user text exactly as the official runner sends it *after* ``"<image>\\n"`` (suffix
    included). When ``image`` and ``image_b64`` are both ``None`` the question is text-only and the runner sends
    ``prompt`` without the image marker (ScienceQA). ``answer_prompt`` is what the runner writes into the answer
    record's ``prompt`` field (ScienceQA: ``"<image>\\n"`` + prompt for image questions; MMBench: without the
    suffix); scorers rely on it the way the official scripts do.
    """

    question_id: Any
    prompt: str
    image: Path | None = None
    category: str | None = None
    image_b64: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    answer_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.answer_prompt is None:
            self.answer_prompt = self.prompt

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_b64 is not None

    def load_image(self):
        """The question's image as an 8-bit RGB PIL image, or ``None``; decoded by :mod:`lmm.data` (the same
        decoded-pixel limit as training). A missing or corrupt image is a :class:`QuestionImageError` naming the
        question and the file."""
        try:
            if self.image_b64 is not None:
                from lmm.data.shards import decode_image

                try:
                    data = base64.b64decode(self.image_b64)  # as LLaVA's MMBench runner (not validating)
                except (binascii.Error, ValueError) as err:
                    raise ImageLoadError("corrupt_image", f"invalid base64 ({err})") from None
                return decode_image(data, "base64 image")
            if self.image is not None:
                return load_image(self.image)
        except ImageLoadError as err:
            raise QuestionImageError(f"question {self.question_id!r}: {err}") from None
        return None


def image_path(image_dir: Path, name: Any, question_id: Any, source: str | Path) -> Path:
    """``image_dir / name`` for an image ``name`` read from the question file ``source``: confined to the image
    folder (:func:`lmm.common.inside`; the folder itself may be a link), else a :class:`BenchmarkDataError` naming
    the file, the question and the reason — raised while the questions are read, before anything is generated."""
    if not isinstance(name, str):
        raise BenchmarkDataError(f"{source}: question {question_id!r}: 'image' must be a file name, got {name!r}")
    try:
        return inside(image_dir, name)
    except UnsafePathError as err:
        raise BenchmarkDataError(
            f"{source}: question {question_id!r}: image {name!r} is not inside the image folder {image_dir} "
            f"({err.why}); image names in question files are relative to that folder"
        ) from None


def loader_questions(rows: Iterable[Mapping[str, Any]], image_dir: Path,
                     source: str | Path = "the question file") -> list[Question]:
    """Questions of a LLaVA question JSONL (``{question_id, image, text[, category]}``): the ``text`` already
    carries the suffix and is sent as is (``model_vqa_loader.py`` / ``model_vqa.py``). Image names must stay
    inside ``image_dir`` (:func:`image_path`); ``source`` names the question file in errors."""
    return [
        Question(
            question_id=row["question_id"],
            prompt=row["text"],
            image=image_path(image_dir, row.get("image"), row["question_id"], source),
            category=row.get("category"),
        )
        for row in rows
    ]


def read_text(path: Path) -> str:
    """A benchmark file's UTF-8 text; a missing file or a byte that is not UTF-8 is a :class:`BenchmarkDataError`
    naming the file and the line."""
    if not path.is_file():
        raise BenchmarkDataError(f"file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise BenchmarkDataError(f"{path}:{line}: {not_utf8(data, err)}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A benchmark data file in JSONL form; any bad line (not JSON, not UTF-8) is a :class:`BenchmarkDataError`
    naming the file and the line."""
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise BenchmarkDataError(f"{path}:{number}: invalid JSON ({err.msg})") from err
    return rows


def read_json(path: Path) -> Any:
    """A benchmark data file in JSON form; invalid JSON or a non-UTF-8 byte is a :class:`BenchmarkDataError`
    naming the file and the line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err


def find_file(data_root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``candidates`` (relative to ``data_root``) that exists, else a clear error."""
    for candidate in candidates:
        path = Path(data_root) / candidate
        if path.exists():
            return path
    tried = ", ".join(str(Path(data_root) / c) for c in candidates)
    raise BenchmarkDataError(f"{what} not found; looked for: {tried}")


def stable_id(key: str) -> int:
    """A process-independent 63-bit id for a string (used for grouping keys in distributed metric states)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") >> 1


@dataclass
class ScoreContext:
    """What one ``score`` call learned about its inputs: counts and human-readable warnings."""

    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    questions: dict[str, float] | None = None  # per-question scores in [0, 1] (Benchmark.question_scores)

    def per_question(self, keys: Sequence[Any], values: Sequence[float]) -> None:
        """The per-question scores, one per question of the benchmark in question-file order (keys unique)."""
        self.questions = {str(k): float(v) for k, v in zip(keys, values, strict=True)}
        if len(self.questions) != len(keys):
            raise AssertionError(f"per-question keys are not unique ({len(keys) - len(self.questions)} repeated)")

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def count(self, name: str, value: int, warning: str | None = None) -> None:
        self.counts[name] = value
        if value and warning:
            self.warn(warning.format(n=value))

    def duplicates(self, keys: Sequence[Any], policy: str = "the last answer is used") -> None:
        examples = ", ".join(repr(k) for k in keys[:3]) + (", ..." if len(keys) > 3 else "")
        self.count(
            "n_duplicates", len(keys), f"{{n}} question(s) answered more than once ({examples}); {policy}"
        )

    def extras(self, n: int, policy: str = "ignored") -> None:
        self.count("n_extra", n, f"{{n}} prediction(s) for questions not in the benchmark; {policy}")


@dataclass(frozen=True)
class Benchmark(ABC):
    """Base class of the twelve benchmarks; instances are immutable, ``with_options`` makes variants."""

    name: str = ""
    max_new_tokens: int = 128
    needs_judge: bool = False
    image_folder: str | None = None  # override of default_image_folder; absolute or relative to data_root

    default_image_folder: ClassVar[str] = ""
    # LLaVA's VQAv2 / VizWiz converters skip (and count) unparsable answer lines; every other official script
    # stops with an exception, so there an unparsable line is an error here too.
    skips_unparsable: ClassVar[bool] = False
    metric_batch: ClassVar[int] = 512

    def with_options(self, **changes: Any) -> Benchmark:
        return dataclasses.replace(self, **changes)

    def image_dir(self, data_root: str | Path) -> Path:
        folder = Path(self.image_folder or self.default_image_folder)
        return folder if folder.is_absolute() else Path(data_root) / folder

    METRIC: ClassVar[type[torchmetrics.Metric]]  # the benchmark's metric, made by metric()
    # What one per-question score is (question_scores); None: the headline is no mean over questions.
    QUESTION_UNIT: ClassVar[str | None] = None
    QUESTION_FILE: ClassVar[str] = ""  # LLaVA's question JSONL under data_root (the loader's --question-file)

    def question_rows(self, data_root: str | Path) -> list[dict[str, Any]]:
        """The question file's rows, as LLaVA's model_vqa_loader reads them."""
        return read_jsonl(self.question_file(data_root))

    def question_file(self, data_root: str | Path) -> Path:
        """The file the questions are read from (named in errors)."""
        return Path(data_root) / self.QUESTION_FILE

    @property
    def scored_on(self) -> str | None:
        """The server holding the ground truth of this benchmark's split (its answers become a submission file and
        the score comes from there), or None when it is scored here."""
        return None

    def is_synthetic(self, data_root: str | Path) -> bool:
        """Whether the benchmark's files under ``data_root`` are a synthetic twin (:data:`SYNTHETIC_MARKER` in its
        folder, the first folder of its question file's path); False for real files or no files."""
        try:
            relative = self.question_file(data_root).relative_to(data_root)
        except (BenchmarkDataError, ValueError):
            return False
        return bool(relative.parts) and (Path(data_root) / relative.parts[0] / SYNTHETIC_MARKER).is_file()

    def questions(self, data_root: str | Path) -> list[Question]:
        """All questions in the official order (image names confined to :meth:`image_dir`)."""
        return loader_questions(self.question_rows(data_root), self.image_dir(data_root),
                                self.question_file(data_root))

    def metric(self, data_root: str | Path | None = None) -> torchmetrics.Metric:
        """A fresh metric (``METRIC()``); ``data_root`` supplies dataset metadata (category names, …) where needed."""
        return self.METRIC()

    def score(
        self,
        predictions: PredictionFile | Sequence[Mapping[str, Any]] | str | Path | None,
        data_root: str | Path,
        judgments: Sequence[str | Path] | None = None,
    ) -> dict[str, Any]:
        """Score LLaVA-format answer records the way the official script does; see each module's notes.
        Judge-scored benchmarks score the ``judgments`` files and accept ``predictions=None``."""
        return self._scored(predictions, data_root, judgments)[0]

    def question_scores(
        self,
        predictions: PredictionFile | Sequence[Mapping[str, Any]] | str | Path | None,
        data_root: str | Path,
        judgments: Sequence[str | Path] | None = None,
    ) -> dict[str, float]:
        """Per question of the benchmark, its score in [0, 1] (:attr:`QUESTION_UNIT`; an unanswered question
        scores 0), keyed by a question key that stays the same across runs on the same benchmark files, in
        question-file order. Computed by the official scoring itself (:meth:`score_questions`): where nothing is
        missing, their mean is the headline accuracy (POPE: the accuracy over all questions, MME: the
        per-question accuracy, not the MME score)."""
        return self.score_questions(predictions, data_root, judgments)[1]

    def score_questions(
        self,
        predictions: PredictionFile | Sequence[Mapping[str, Any]] | str | Path | None,
        data_root: str | Path,
        judgments: Sequence[str | Path] | None = None,
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """:meth:`score` and :meth:`question_scores` of one scoring pass. A benchmark whose headline is no mean
        over questions (LLaVA-W: a ratio of sums; MMBench: circular groups) raises a ``ValueError``."""
        if self.QUESTION_UNIT is None:
            raise ValueError(f"{self.name} has no per-question scores: its headline is not a mean over questions")
        result, ctx = self._scored(predictions, data_root, judgments)
        if ctx.questions is None:
            raise AssertionError(f"{self.name}: _score set no per-question scores")
        return result, ctx.questions

    def _scored(self, predictions, data_root, judgments) -> tuple[dict[str, Any], ScoreContext]:
        if predictions is None and not self.needs_judge:
            raise PredictionsError(f"{self.name} is scored from a predictions file; none was given")
        pf = PredictionFile(records=[]) if predictions is None else as_prediction_file(predictions)
        if pf.n_unparsable and not self.skips_unparsable:
            raise PredictionsError(pf.describe_unparsable() + f"; the official {self.name} script stops here")
        ctx = ScoreContext()
        ctx.count("n_predictions", len(pf.records))
        if pf.n_unparsable:
            ctx.warn(pf.describe_unparsable() + " (skipped, as the official converter does)")
        ctx.count("n_unparsable", pf.n_unparsable)
        scores = self._score(pf.records, Path(data_root), judgments, ctx)
        result: dict[str, Any] = {"benchmark": self.name}
        result.update(scores)
        result.update(ctx.counts)
        result["warnings"] = ctx.warnings
        return result, ctx

    @abstractmethod
    def _score(
        self,
        records: list[dict[str, Any]],
        data_root: Path,
        judgments: Sequence[str | Path] | None,
        ctx: ScoreContext,
    ) -> dict[str, Any]:
        """Benchmark-specific alignment and metric feeding; returns the sub-scores."""

    def _feed(self, metric: torchmetrics.Metric, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Update ``metric`` with parallel ``columns`` in batches, then compute."""
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise AssertionError(
                f"metric columns differ in length: { {k: len(v) for k, v in columns.items()} }"
            )
        total = lengths.pop() if lengths else 0
        for start in range(0, total, self.metric_batch):
            metric.update(**{k: list(v[start : start + self.metric_batch]) for k, v in columns.items()})
        return metric.compute()


def warn_stderr(messages: Iterable[str]) -> None:
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
