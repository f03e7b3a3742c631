"""The shard manifest (one row per converted sample) and exact, seed-deterministic selection through it.

A row: ``key`` (the WebDataset key), ``id`` (the record's id; not unique in LLaVA's files), ``source``, ``has_image``,
``n_images``, ``words`` (LLaVA's modality length: whitespace words over all turns), ``tokens`` (text tokens incl. one
marker per image, with the conversion's tokenizer and template; ``-1`` when none was given), ``shard`` (tar file name)
and ``position`` (index in it), plus ``members`` (tar member → ``[data offset, size]``) for reading it back.

Selection never depends on worker, rank or shard counts: a subsample keeps ``round(r × N)`` rows exactly, split over
sources by largest-remainder rounding of ``r × N_source``, and within a source takes the rows whose
``blake2b(seed:key)`` ranks lowest — so subsets are nested across ratios (the 0.1 subset lies inside the 0.3 one).

A manifest is checked as it is loaded (:func:`plain_name`, :func:`member_spans`): shard names are plain file names
inside the folder, member spans two integers >= 0, every line UTF-8 JSON — else a ``ValueError`` naming the line or
row. (``lmm.data.shards.read_member`` checks the rest when it reads: a regular file, inside the folder, the span
inside the file.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from lmm.data.remote import RemoteReader, RemoteReadError, is_url, join

MANIFEST_NAME = "manifest.jsonl"
REPORT_NAME = "report.json"


def write_manifest(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def _row(i, n: int) -> int:
    i = int(i)
    if not -n <= i < n:
        raise IndexError(f"row {i} of {n}")
    return i + n if i < 0 else i


class StrColumn(Sequence):
    """Strings in one UTF-8 buffer with offsets (numpy): no Python object per row, so forked loader workers that
    read it (or a garbage collection that walks the heap) never copy its pages — a list of 665K ``str`` would be."""

    def __init__(self, values: Iterable[str] = ()):
        data = [v.encode("utf-8") for v in values]
        self.offsets = np.zeros(len(data) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in data], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(data), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        a, b = self.offsets[_row(i, len(self))], self.offsets[_row(i, len(self)) + 1]
        return self.buffer[a:b].tobytes().decode("utf-8")


class CodeColumn(Sequence):
    """A column of few distinct strings (sources, shard names): ``codes`` (numpy int32) into ``names``."""

    def __init__(self, values: Iterable[str] = ()):
        index: dict[str, int] = {}
        self.codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int32)
        self.names = list(index)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.names[c] for c in self.codes[i]]
        return self.names[self.codes[i]]


class MemberColumn(Sequence):
    """Each row's tar members (``{"json": [offset, size], "jpg": [...]}``) as flat numpy arrays: row ``i`` owns
    entries ``ptr[i]:ptr[i+1]`` of ``name`` (codes into ``names``), ``offset`` and ``size``."""

    def __init__(self, rows: Iterable[Mapping[str, list[int]]] = ()):
        names: dict[str, int] = {}
        ptr, code, off, size = [0], [], [], []
        for members in rows:
            for name, (o, n) in members.items():
                code.append(names.setdefault(name, len(names)))
                off.append(o)
                size.append(n)
            ptr.append(len(code))
        self.names = list(names)
        self.ptr, self.name = np.array(ptr, dtype=np.int64), np.array(code, dtype=np.int16)
        self.offset, self.size = np.array(off, dtype=np.int64), np.array(size, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ptr) - 1

    def __getitem__(self, i) -> dict[str, list[int]]:
        i = _row(i, len(self))
        a, b = self.ptr[i], self.ptr[i + 1]
        return {self.names[c]: [int(o), int(n)]
                for c, o, n in zip(self.name[a:b], self.offset[a:b], self.size[a:b])}


COLUMNS = ("key", "id", "source", "has_image", "n_images", "words", "tokens", "shard", "position", "members")


class Manifest:
    """The rows of one converted data set (a shard folder), held column by column in numpy arrays and string
    buffers (:class:`StrColumn`, :class:`CodeColumn`, :class:`MemberColumn`): ≈ 60 bytes a row, a handful of Python
    objects in all, so loader workers forked from the trainer do not grow by copy-on-read over an epoch.
    ``keys[i]``, ``ids[i]``, ``sources[i]``, ``shards[i]``, ``members[i]`` read one row back."""

    def __init__(self, root: str | Path | None, rows: Iterable[Mapping] = (), report: dict | None = None):
        cols: dict[str, list] = {c: [] for c in COLUMNS}
        names: set[str] = set()  # shard names found plain (a name is checked once, not once per row)
        for n, row in enumerate(rows):
            try:
                shard = row.get("shard", "")
                if "shard" in row and shard not in names:
                    names.add(plain_name(shard))
                values = (row["key"], str(row.get("id", row["key"])), row["source"], bool(row.get("has_image", False)),
                          int(row.get("n_images", 0)), int(row.get("words", 1)), int(row.get("tokens", -1)),
                          shard, int(row.get("position", 0)), member_spans(row.get("members", {})))
            except (KeyError, TypeError, ValueError) as e:
                where = join(root, MANIFEST_NAME) if root is not None else "manifest"
                detail = f"no field {e}" if isinstance(e, KeyError) else e
                raise ValueError(f"{where} row {n + 1} is malformed: {detail}") from None
            for c, v in zip(COLUMNS, values):
                cols[c].append(v)
        self.root, self.report = root, report or {}
        self.keys, self.ids = StrColumn(cols["key"]), StrColumn(cols["id"])
        self.sources, self.shards = CodeColumn(cols["source"]), CodeColumn(cols["shard"])
        self.has_image = np.array(cols["has_image"], dtype=bool)
        self.n_images, self.words = np.array(cols["n_images"], np.int32), np.array(cols["words"], np.int64)
        self.tokens, self.positions = np.array(cols["tokens"], np.int64), np.array(cols["position"], np.int64)
        self.members = MemberColumn(cols["members"])
        if len(set(cols["key"])) != len(cols["key"]):
            dup = [k for k, c in Counter(cols["key"]).items() if c > 1][:5]
            raise ValueError(f"{root} has duplicate keys, e.g. {dup}")

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        """The manifest of a shard folder: a local folder or a URL (:mod:`lmm.data.remote`, fetched once, at most
        ``RemoteReader.max_file`` bytes). A line that is not UTF-8 JSON, or a row that names a shard outside the
        folder or a span that is not two integers >= 0, is a :class:`ValueError` naming the file and line or row."""
        if is_url(root):
            path, reader = join(root, MANIFEST_NAME), RemoteReader()
            lines = reader.read(path).split(b"\n")
            try:
                report = reader.read(join(root, REPORT_NAME), limit=RemoteReader.max_report)
            except RemoteReadError:
                report = None  # a folder without its conversion report still trains
            return cls(root, _parse(path, lines), _report(join(root, REPORT_NAME), report))
        root = Path(root)
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {root}: convert the data first (python -m lmm.data.shards)")
        report = root / REPORT_NAME
        with open(path, "rb") as f:
            return cls(root, _parse(path, f), _report(report, report.read_bytes() if report.is_file() else None))

    def __len__(self) -> int:
        return len(self.keys)

    def modality_lengths(self, rows: Sequence[int] | np.ndarray) -> list[int]:
        """LLaVA's signed lengths of ``rows``: word count, positive with an image, negative for text-only."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(self.has_image[rows], self.words[rows], -self.words[rows]).tolist()

    def token_lengths(self, rows: Sequence[int] | np.ndarray, image_tokens: int, max_length: int | None = None,
                      tokens_per_word: float = 1.5) -> list[int]:
        """Each row's length in tokens after the splice (``image_tokens`` per image), capped at ``max_length``: from
        the ``tokens`` column where the conversion counted them (``--tokenizer``), else estimated as
        ``ceil(words × tokens_per_word)`` plus the image tokens."""
        rows = np.asarray(rows, dtype=np.int64)
        n_img = self.n_images[rows].astype(np.int64)
        counted = self.tokens[rows]
        text = np.where(counted >= 0, counted - n_img, np.ceil(self.words[rows] * tokens_per_word).astype(np.int64))
        out = np.maximum(text, 1) + n_img * int(image_tokens)
        return (np.minimum(out, max_length) if max_length else out).tolist()

    def source_counts(self, rows: Sequence[int] | np.ndarray | None = None) -> Counter:
        """Samples per source, of all rows or of ``rows`` (repeats counted)."""
        codes = self.sources.codes if rows is None else self.sources.codes[np.asarray(rows, dtype=np.int64)]
        counts = np.bincount(codes, minlength=len(self.sources.names))
        return Counter({s: int(n) for s, n in zip(self.sources.names, counts) if n})

    def rows_by_source(self) -> dict[str, list[int]]:
        codes = self.sources.codes
        return {s: np.flatnonzero(codes == c).tolist() for c, s in enumerate(self.sources.names)
                if (codes == c).any()}


def plain_name(name) -> str:
    """``name`` when it is a plain file name (a shard in its folder), else :class:`ValueError`: no ``/``, ``\\``,
    ``:`` (a drive) or NUL, not empty, ``.`` or ``..`` — a manifest never makes the loader read outside the folder."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\:\0"):
        raise ValueError(f"shard name {name!r} is not a plain file name inside the shard folder")
    return name


def member_spans(members) -> dict[str, list[int]]:
    """``members`` (tar member → ``[offset, size]``) when every span is two integers >= 0, else :class:`ValueError`."""
    if type(members) is not dict:
        raise ValueError(f"members {members!r} is not a mapping of member names to [offset, size]")
    for name, span in members.items():  # type(...) is int: not a bool, a float or a string (a hot loop: 665K rows)
        if type(span) not in (list, tuple) or len(span) != 2 or type(span[0]) is not int or type(span[1]) is not int \
                or span[0] < 0 or span[1] < 0:
            raise ValueError(f"member {name!r} has the span {span!r}, not [offset, size] as two integers >= 0")
    return members


def _parse(path, lines: Iterable[bytes]) -> Iterator[dict]:
    for n, raw in enumerate(lines):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} line {n + 1}: not UTF-8 ({e.reason} at byte {e.start} of the line)") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not all(c in row for c in COLUMNS if c != "tokens"):
                raise KeyError(f"a row needs the fields {', '.join(COLUMNS)}")
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path} line {n + 1} is not a manifest row: {e}") from None
        yield row


def _report(path, data: bytes | None) -> dict:
    if data is None:
        return {}
    try:
        report = json.loads(data.decode("utf-8"))
    except ValueError as e:  # not UTF-8, not JSON
        raise ValueError(f"{path} is not a JSON report: {e}") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not a JSON report: a {type(report).__name__}, not an object")
    return report


def _rank(seed: int | str, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()


def largest_remainder(quotas: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to ``total`` (which must lie within one per source of ``sum(quotas)``): each source
    gets ``floor(quota)``, and the remaining units go to the largest fractional parts (ties: source name)."""
    counts = {s: math.floor(q) for s, q in quotas.items()}
    rest = total - sum(counts.values())
    if not 0 <= rest <= len(quotas):
        raise ValueError(f"cannot round quotas {dict(quotas)} to a total of {total}")
    for s in sorted(quotas, key=lambda s: (counts[s] - quotas[s], s))[:rest]:
        counts[s] += 1
    return counts


def subsample_counts(source_sizes: Mapping[str, int], ratio: float = 1.0,
                     per_source: Mapping[str, float | None] | None = None) -> dict[str, int]:
    """How many rows each source keeps. Sources with their own ratio keep ``round(r_s × N_s)``; the others share
    ``round(ratio × their total)`` by largest remainder, so per-source proportions are kept exactly."""
    per_source = {s: r for s, r in (per_source or {}).items() if r is not None}
    for name, r in [("subsample", ratio), *per_source.items()]:
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"subsample ratio for {name} must lie in [0, 1], got {r}")
    shared = {s: n for s, n in source_sizes.items() if s not in per_source}
    total = round(ratio * sum(shared.values()))
    counts = largest_remainder({s: ratio * n for s, n in shared.items()}, total)
    counts.update({s: round(float(per_source[s]) * n) for s, n in source_sizes.items() if s in per_source})
    return counts


def select_rows(manifest: Manifest, ratio: float = 1.0, per_source: Mapping[str, float | None] | None = None,
                include: Mapping[str, bool] | None = None, seed: int = 0, default_include: bool = True) -> list[int]:
    """Row indices (ascending) of the selected subset; see the module docstring for the guarantees."""
    include = include or {}
    by_source = {s: rows for s, rows in manifest.rows_by_source().items() if include.get(s, default_include)}
    counts = subsample_counts({s: len(r) for s, r in by_source.items()}, ratio, per_source)
    chosen: list[int] = []
    for s, rows in by_source.items():
        k = counts[s]
        chosen += rows if k == len(rows) else sorted(rows, key=lambda i: _rank(seed, manifest.keys[i]))[:k]
    return sorted(chosen)


def epoch_items(manifest: Manifest, rows: list[int], weights: Mapping[str, float] | None, seed: int,
                epoch: int) -> list[int]:
    """The rows one epoch visits: a source of weight ``w`` appears ``round(w × N_s)`` times — ``floor(w)`` full copies
    plus a seed- and epoch-deterministic share of the rest. Weight 1 (the default) visits each selected row once."""
    weights = {s: float(w) for s, w in (weights or {}).items() if w is not None and float(w) != 1.0}
    if not weights:
        return list(rows)
    out: list[int] = []
    by_source: dict[str, list[int]] = {}
    for i in rows:
        by_source.setdefault(manifest.sources[i], []).append(i)
    for s, members in by_source.items():
        w = weights.get(s, 1.0)
        if w < 0:
            raise ValueError(f"weight of source {s!r} must be >= 0, got {w}")
        copies, extra = int(w), round((w - int(w)) * len(members))
        out += members * copies
        out += sorted(members, key=lambda i: _rank(f"{seed}:{epoch}", manifest.keys[i]))[:extra]
    return sorted(out)
