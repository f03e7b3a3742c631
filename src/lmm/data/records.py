"""The one place a LLaVA-format record is judged valid.

A record is ``{"id": str, "image": "rel/path.jpg" (optional; a list is accepted), "conversations":
[{"from": "human"|"gpt", "value": str}, ...]}`` (LLaVA's ``docs/Finetune_Custom_Data.md``). The converter, the
map-style reader and the tests all call :func:`parse_record`; a bad record raises :class:`RecordError` naming the
sample id and the reason, which training-time skips count under the same reason string. :func:`read_records` reads
a file of them, where text that is not UTF-8 costs only the records holding it (``invalid_utf8``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lmm.text.templates import IMAGE_TOKEN

HUMAN_ROLES = {"human", "user"}
GPT_ROLES = {"gpt", "assistant"}


class RecordError(ValueError):
    """A sample that cannot be trained on; ``reason`` is a short stable key, ``detail`` the explanation."""

    def __init__(self, sample_id: str, reason: str, detail: str = ""):
        self.sample_id, self.reason, self.detail = sample_id, reason, detail
        super().__init__(f"sample {sample_id!r}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class Record:
    id: str
    images: list[str]
    turns: list[tuple[str, str]]  # (human, gpt) pairs; "<image>\n" leads the turn that carries the image
    raw: dict = field(default_factory=dict, repr=False)
    normalised: list[str] = field(default_factory=list)  # what was changed as LLaVA's preprocess changes it

    @property
    def has_image(self) -> bool:
        return bool(self.images)

    def word_length(self) -> int:
        """LLaVA's modality length: whitespace words over all turns (made negative for text-only by the sampler)."""
        return sum(len(h.split()) + len(g.split()) for h, g in self.turns)


def _move_image_marker(value: str) -> str:
    # preprocess_multimodal: the marker goes to the front, followed by a newline.
    return (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()


def parse_record(raw: Any, index: int | None = None) -> Record:
    """Validate one LLaVA record; raise :class:`RecordError` with the sample id and reason if it is unusable."""
    fallback_id = f"#{index}" if index is not None else "<unknown>"
    if not isinstance(raw, dict):
        raise RecordError(fallback_id, "malformed_record", f"expected a JSON object, got {type(raw).__name__}")
    sid = str(raw.get("id", fallback_id))
    conv = raw.get("conversations")
    if not isinstance(conv, list):
        raise RecordError(sid, "malformed_record", "'conversations' is missing or not a list")
    if not conv:
        raise RecordError(sid, "empty_conversation")
    image = raw.get("image")
    if image is None:
        images: list[str] = []
    elif isinstance(image, str) and image.strip():
        images = [image]
    elif isinstance(image, list) and all(isinstance(x, str) and x.strip() for x in image):
        images = list(image)
    else:
        raise RecordError(sid, "malformed_record", f"'image' must be a path or a list of paths, got {image!r}")
    for path in images:
        parts = PurePosixPath(path.replace("\\", "/")).parts
        if path.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
            raise RecordError(sid, "unsafe_image_path", f"{path!r} points outside the image folder (absolute or '..')")

    roles, values = [], []
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError(sid, "malformed_record", f"turn {k} lacks a string 'value'")
        role = str(turn.get("from", "")).lower()
        if role in HUMAN_ROLES:
            roles.append("human")
        elif role in GPT_ROLES:
            roles.append("gpt")
        else:
            raise RecordError(sid, "malformed_record", f"turn {k} has unknown role {turn.get('from')!r}")
        values.append(turn["value"])
    normalised = []
    if roles[0] != "human":  # LLaVA's preprocess_* drops a first turn that is not the human's ("Skip the first one")
        roles, values, conv = roles[1:], values[1:], conv[1:]
        normalised.append("dropped_leading_assistant_turn")
        if not roles:
            raise RecordError(sid, "empty_conversation", "only an assistant turn")
    for k, role in enumerate(roles):
        if role != ("human" if k % 2 == 0 else "gpt"):
            raise RecordError(sid, "roles_not_alternating", f"turn {k} is from {conv[k].get('from')!r}")
    if len(roles) % 2:
        raise RecordError(sid, "ends_with_human_turn", "the last turn has no assistant reply")

    n_markers = sum(v.count(IMAGE_TOKEN) for v in values)
    if any(IMAGE_TOKEN in values[k] for k in range(1, len(values), 2)):
        raise RecordError(sid, "image_marker_in_reply")
    if n_markers > len(images):
        raise RecordError(sid, "more_image_markers_than_images", f"{n_markers} markers, {len(images)} image(s)")
    if n_markers < len(images):
        raise RecordError(sid, "image_without_marker", f"{len(images)} image(s), {n_markers} <image> marker(s)")

    turns = []
    for k in range(0, len(values), 2):
        human, gpt = values[k], values[k + 1]
        if not gpt.strip():
            raise RecordError(sid, "empty_reply", f"reply {k // 2} is empty")
        if not human.replace(IMAGE_TOKEN, "").strip() and IMAGE_TOKEN not in human:
            raise RecordError(sid, "empty_question", f"question {k // 2} is empty")
        if human.count(IMAGE_TOKEN) == 1:
            human = _move_image_marker(human)
        turns.append((human, gpt))
    return Record(sid, images, turns, raw, normalised)


def printable(text: str) -> str:
    """``text`` with what is not Unicode text shown as escapes: a byte that was not UTF-8 (kept by
    ``surrogateescape``) as ``\\xff``, a lone surrogate (a ``\\ud83d`` escape in JSON) as ``\\ud83d``; so it can be
    printed and written as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_utf8(where: str, raw: Any, fallback: str, char: str) -> RecordError:
    sid = printable(str(raw["id"])) if isinstance(raw, dict) and "id" in raw else fallback
    return RecordError(sid, "invalid_utf8", f"{where}: byte 0x{ord(char) - 0xDC00:02x} is not UTF-8")


_ESCAPED = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8, as ``surrogateescape`` decodes it
_SPACE = re.compile(r"[ \t\n\r]*")


def _elements(text: str):
    """``(index, start, end, value)`` of each element of the JSON list ``text``, parsed one by one (the spans give
    each element's line); :class:`json.JSONDecodeError` where the text is not a JSON list."""
    decoder = json.JSONDecoder()
    pos = _SPACE.match(text).end()
    if text[pos:pos + 1] != "[":
        raise json.JSONDecodeError("Expecting '['", text, pos)
    pos = _SPACE.match(text, pos + 1).end()
    index = 0
    if text[pos:pos + 1] != "]":
        while True:
            value, end = decoder.raw_decode(text, pos)
            yield index, pos, end, value
            index += 1
            pos = _SPACE.match(text, end).end()
            if text[pos:pos + 1] == "]":
                break
            if text[pos:pos + 1] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos = _SPACE.match(text, pos + 1).end()
    if _SPACE.match(text, pos + 1).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, pos + 1)


def _read_list(path: Path, data: bytes, rejected: list[RecordError]) -> list[tuple[int, Any]]:
    """The ``(index, element)`` pairs of a JSON list file. Fast path: strict UTF-8 and :func:`json.loads`. When the
    file holds bytes that are not UTF-8, it is decoded with ``surrogateescape`` and parsed element by element, and the
    elements holding such bytes are rejected (``invalid_utf8``, with their id, index and line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    try:
        if text is not None:
            raw = json.loads(text)
            if not isinstance(raw, list):
                raise ValueError(f"{path} must hold a JSON list of LLaVA records")
            return list(enumerate(raw))
        text = data.decode("utf-8", "surrogateescape")
        if not text.startswith("[", _SPACE.match(text).end()):
            json.loads(text)  # not a list: its own error, or a JSON value that is not a list
            raise ValueError(f"{path} must hold a JSON list of LLaVA records")
        items, line, seen = [], 1, 0
        for index, start, end, value in _elements(text):
            bad = _ESCAPED.search(text, start, end)
            if bad is None:
                items.append((index, value))
                continue
            line, seen = line + text.count("\n", seen, bad.start()), bad.start()
            rejected.append(_not_utf8(f"record #{index}, line {line}", value, f"#{index}", bad.group()))
        return items
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {printable(str(e))}") from None


def read_records(json_path: str | Path) -> tuple[list[Record], list[RecordError]]:
    """Parse a LLaVA JSON list (or JSONL) into valid records and the errors of the rejected ones. Text that is not
    UTF-8 costs only the records holding it (``invalid_utf8``: a JSONL line, or an element of a list, named by its id,
    index and line); a JSONL line that is not JSON is ``malformed_json``; a list file that is not a JSON list at all
    is a :class:`ValueError` naming the file. A UTF-8 byte-order mark is skipped."""
    path = Path(json_path)
    data = path.read_bytes()
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    rejected: list[RecordError] = []
    if path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(data.split(b"\n"), 1):  # JSON lines end at "\n" only (U+2028 is text)
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                try:
                    raw = json.loads(line.decode("utf-8", "surrogateescape"))
                except json.JSONDecodeError:
                    raw = None
                where = f"line {n}, byte {e.start + 1}"
                rejected.append(_not_utf8(where, raw, f"line {n}", chr(0xDC00 + line[e.start])))
                continue
            try:
                items.append((len(items), json.loads(text)))
            except json.JSONDecodeError as e:
                rejected.append(RecordError(f"line {n}", "malformed_json", str(e)))
    else:
        items = _read_list(path, data, rejected)
    del data
    records: list[Record] = []
    for i, r in items:
        try:
            records.append(parse_record(r, i))
        except RecordError as e:
            rejected.append(e)
    return records, rejected
