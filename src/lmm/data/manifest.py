"""The shard manifest (one row per converted sample) and exact, seed-deterministic selection through it.

A row: ``key`` (the WebDataset key), ``id`` (the record's id; not unique in LLaVA's files), ``source``, ``has_image``,
``n_images``, ``words`` (LLaVA's modality length: whitespace words over all turns), ``tokens`` (text tokens incl. one
marker per image, with the conversion's tokenizer and template; ``-1`` when none was given), ``shard`` (tar file name)
and ``position`` (index in it), plus ``members`` (tar member → ``[data offset, size]``) for reading it back.

Selection never depends on worker, rank or shard counts: a subsample keeps ``round(r × N)`` rows exactly, split over
sources by largest-remainder rounding of ``r × N_source``, and within a source takes the rows whose
``blake2b(seed:key)`` ranks lowest — so subsets are nested across ratios (the 0.1 subset lies inside the 0.3 one).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class Manifest:
    """Columnar rows of one converted data set (a shard folder)."""

    root: Path
    keys: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    has_image: list[bool] = field(default_factory=list)
    n_images: list[int] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    members: list[dict[str, list[int]]] = field(default_factory=list)
    report: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        """The manifest of a shard folder: a local folder or a URL (:mod:`lmm.data.remote`, fetched once)."""
        if is_url(root):
            path, reader = join(root, MANIFEST_NAME), RemoteReader()
            lines = reader.read(path).decode("utf-8").splitlines()
            try:
                report = json.loads(reader.read(join(root, REPORT_NAME)))
            except RemoteReadError:
                report = {}
            return cls._parse(root, path, lines, report)
        root = Path(root)
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {root}: convert the data first (python -m lmm.data.shards)")
        report = root / REPORT_NAME
        with open(path, encoding="utf-8") as f:
            return cls._parse(root, path, f, json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {})

    @classmethod
    def _parse(cls, root, path, lines, report: dict) -> Manifest:
        m = cls(root)
        m.report = report
        interned: dict[str, str] = {}
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                m.keys.append(row["key"])
                m.ids.append(str(row["id"]))
                m.sources.append(interned.setdefault(row["source"], row["source"]))
                m.has_image.append(bool(row["has_image"]))
                m.n_images.append(int(row["n_images"]))
                m.words.append(int(row["words"]))
                m.tokens.append(int(row.get("tokens", -1)))
                m.shards.append(interned.setdefault(row["shard"], row["shard"]))
                m.positions.append(int(row["position"]))
                m.members.append(row["members"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path} line {n + 1} is not a manifest row: {e}") from None
        if len(set(m.keys)) != len(m.keys):
            dup = [k for k, c in Counter(m.keys).items() if c > 1][:5]
            raise ValueError(f"{path} has duplicate keys, e.g. {dup}")
        return m

    def __len__(self) -> int:
        return len(self.keys)

    def modality_length(self, i: int) -> int:
        """LLaVA's signed length: word count, positive with an image, negative for text-only."""
        return self.words[i] if self.has_image[i] else -self.words[i]

    def source_counts(self) -> Counter:
        return Counter(self.sources)

    def rows_by_source(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.sources):
            out.setdefault(s, []).append(i)
        return out


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
