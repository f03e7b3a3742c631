"""A benchmark's answers written as they come, and resumed.

``eval.py`` appends each batch's answers to ``<out>/<bench>/answers.jsonl.partial`` (flushed to disk) beside
``answers.jsonl.partial.key.json``, the key of what the answers depend on (:func:`answer_key`: the model folder and
its files, template, decoding length, dtype, batch size, model id, preprocessing, device type, the question set).
When the evaluation stops (a corrupt image, a crash, a pre-emption), the answers already generated stay there; a
re-run into the same output folder with the same key keeps them — the longest run of valid records that answer the
questions in order — and generates only the rest. The complete file becomes ``answers.jsonl`` (a rename) and its
key ``answers.key.json``, so a benchmark that finished in an evaluation that failed later is not generated again.
A different key starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmm.common import atomic_write
from lmm.evaluation.answers import check_record, write_answers

log = logging.getLogger(__name__)

ANSWERS = "answers.jsonl"
KEY = "answers.key.json"
PARTIAL = "answers.jsonl.partial"
PARTIAL_KEY = "answers.jsonl.partial.key.json"


def questions_digest(questions: Sequence) -> str:
    """A hash of the question set: ids, prompts, answer prompts and images (paths, or the base64 data), in order."""
    h = hashlib.sha256()
    for q in questions:
        b64 = hashlib.sha256(q.image_b64.encode()).hexdigest() if q.image_b64 is not None else None
        h.update(json.dumps([q.question_id, q.prompt, q.answer_prompt, str(q.image), b64]).encode() + b"\n")
    return h.hexdigest()


def model_files(model_dir: str | Path) -> dict[str, list[int]]:
    """``{file: [size, mtime_ns]}`` of every file of a model folder: a retrained or replaced model changes them."""
    root = Path(model_dir).resolve()
    return {str(p.relative_to(root)): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(root.rglob("*")) if p.is_file()}


def answer_key(model_dir: str | Path, settings: Mapping[str, Any], questions: Sequence) -> dict[str, Any]:
    """What a benchmark's answers depend on: the model folder (path and files), ``settings`` (template, decoding,
    dtype, batch size, …) and the question set."""
    return {"model_dir": str(Path(model_dir).resolve()), "model_files": model_files(model_dir), **settings,
            "n_questions": len(questions), "questions": questions_digest(questions)}


class AnswerLog:
    """The answers of one benchmark in ``folder``: :meth:`resume` → :meth:`append` per batch → :meth:`finish`."""

    def __init__(self, folder: str | Path, key: Mapping[str, Any], questions: Sequence):
        self.folder, self.key, self.questions = Path(folder), json.loads(json.dumps(dict(key))), questions
        self.answers, self.partial = self.folder / ANSWERS, self.folder / PARTIAL
        self.done: list[dict[str, Any]] = []
        self.n_saved = 0  # answers on disk: kept + appended

    def _key_matches(self, name: str) -> bool:
        try:
            return json.loads((self.folder / name).read_text(encoding="utf-8")) == self.key
        except (OSError, ValueError):
            return False

    def _prefix(self, path: Path) -> list[dict[str, Any]]:
        """The valid records of ``path`` that answer the questions in order, up to the first that does not (a
        line cut by a crash, another question)."""
        records: list[dict[str, Any]] = []
        try:
            lines = path.read_bytes().split(b"\n")
        except OSError:
            return records
        for raw, q in zip(lines, self.questions):
            try:
                record = json.loads(raw.decode("utf-8"))
            except ValueError:  # not UTF-8, not JSON (UnicodeDecodeError is a ValueError)
                break
            if check_record(record) or record["question_id"] != q.question_id \
                    or record.get("prompt") != q.answer_prompt:
                break
            records.append(record)
        return records

    def resume(self) -> list[dict[str, Any]]:
        """The answers kept from an earlier run with the same key, in question order (all of them when it
        finished); the partial file then holds exactly these, ready for :meth:`append`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._key_matches(KEY):
            done = self._prefix(self.answers)
            if len(done) == len(self.questions):
                self.done, self.n_saved = done, len(done)
                log.info("%s: all %d answers kept from the finished run with the same settings", self.folder,
                         len(done))
                return done
        (self.folder / KEY).unlink(missing_ok=True)  # answers.jsonl no longer stands for a finished run of this key
        self.done = self._prefix(self.partial) if self._key_matches(PARTIAL_KEY) else []
        if self.done:
            log.info("%s: %d of %d answers kept from an interrupted run with the same settings; generating the "
                     "rest", self.folder, len(self.done), len(self.questions))
        elif self.partial.exists():
            log.warning("%s: %s was written with other settings (or holds no usable answer): starting afresh",
                        self.folder, PARTIAL)
        self.n_saved = write_answers(self.partial, self.done)  # exactly the kept prefix (atomic)
        with atomic_write(self.folder / PARTIAL_KEY) as handle:
            json.dump(self.key, handle, indent=1)
        return self.done

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """One batch's answers, appended to the partial file and flushed to disk."""
        self.n_saved += write_answers(self.partial, records, append=True)

    def finish(self) -> Path:
        """The partial file, now complete, becomes ``answers.jsonl`` and its key ``answers.key.json``."""
        if self.partial.exists():
            os.replace(self.partial, self.answers)
            os.replace(self.folder / PARTIAL_KEY, self.folder / KEY)
        return self.answers
