"""A stage's data mixture: where its shards come from, which sources it takes (include / weight / subsample), and the
per-source response-format prompt policy applied at load time (the shards keep the raw data).

Config shape (one node per stage under the Hydra ``data`` group; every key optional but a data location)::

    shards: null                 # a converted folder; null → convert `json` + `image_folder` into the cache
    json: .../llava_v1_5_mix665k.json
    image_folder: .../playground/data
    rules: llava_mix665k         # source rules: a built-in name, a YAML/JSON file, or a list of rule dicts
    unknown_source: reject       # reject | tag
    shard_size: 1000             # records per shard
    convert_workers: 4
    verify_images: true          # decode every image at conversion (bad ones are rejected there)
    group_by_modality_length: true
    subsample: 1.0               # global ratio (exact, seed-deterministic; per-source proportions kept)
    subsample_seed: 0
    default_include: true        # sources found in the manifest but not listed below
    sources:
      vqav2: {include: true, weight: 1.0, subsample: null, format_prompt: keep, count: 82783}

``format_prompt`` is ``keep`` (train on the data as it is), ``strip`` (drop the suffix from every question that ends
with it; Table 2 row 1 trains VQAv2 this way) or ``replace`` (swap it for ``replacement``). The suffix defaults to the
source's prompt from spec §2.2 (:data:`FORMAT_SUFFIXES`) and can be set with ``format_suffix``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lmm.common import plain
from lmm.data.records import Record
from lmm.data.sources import check_source_names
from lmm.text.prompts import ONE_SENTENCE_CAPTION, OPTION_LETTER, SHORT_ANSWER

FORMAT_SUFFIXES = {
    "vqav2": SHORT_ANSWER, "gqa": SHORT_ANSWER, "okvqa": SHORT_ANSWER, "ocrvqa": SHORT_ANSWER,
    "aokvqa": OPTION_LETTER, "textcaps": ONE_SENTENCE_CAPTION,
}
POLICIES = ("keep", "strip", "replace")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    include: bool = True
    weight: float = 1.0
    subsample: float | None = None
    format_prompt: str = "keep"
    format_suffix: str | None = None
    replacement: str | None = None
    count: int | None = None  # the expected number of samples (documentation; a mismatch is logged)

    def __post_init__(self):
        if self.format_prompt not in POLICIES:
            raise ValueError(f"source {self.name!r}: format_prompt must be one of {POLICIES}, got {self.format_prompt!r}")
        if self.format_prompt != "keep" and not self.suffix:
            raise ValueError(f"source {self.name!r} has no known response-format suffix: set format_suffix to use "
                             f"format_prompt={self.format_prompt!r}")
        if self.format_prompt == "replace" and self.replacement is None:
            raise ValueError(f"source {self.name!r}: format_prompt=replace needs a 'replacement'")
        if self.weight < 0:
            raise ValueError(f"source {self.name!r}: weight must be >= 0, got {self.weight}")

    @property
    def suffix(self) -> str | None:
        return self.format_suffix or FORMAT_SUFFIXES.get(self.name)


@dataclass
class StageMixture:
    shards: str | None = None
    json: str | None = None
    image_folder: str | None = None
    rules: Any = "llava_mix665k"
    unknown_source: str = "reject"
    shard_size: int = 1000
    convert_workers: int = 1
    verify_images: bool = True
    group_by_modality_length: bool = True
    subsample: float = 1.0
    subsample_seed: int = 0
    default_include: bool = True
    sources: dict[str, SourceSpec] = field(default_factory=dict)

    def __post_init__(self):
        if not self.shards and not self.json:
            raise ValueError("a stage's data needs 'shards' (a converted folder) or 'json' (+ 'image_folder')")

    def include_map(self) -> dict[str, bool]:
        return {s: spec.include for s, spec in self.sources.items()}

    def subsample_map(self) -> dict[str, float | None]:
        return {s: spec.subsample for s, spec in self.sources.items()}

    def weight_map(self) -> dict[str, float]:
        return {s: spec.weight for s, spec in self.sources.items()}

    def policy(self) -> FormatPromptPolicy | None:
        active = {s: spec for s, spec in self.sources.items() if spec.format_prompt != "keep"}
        return FormatPromptPolicy(active) if active else None


def mixture_from_cfg(node: Mapping[str, Any], where: str = "data.<stage>") -> StageMixture:
    """Build a :class:`StageMixture` from a config node (dict or DictConfig) found at ``where``; unknown keys are
    errors, and so is a source name the stage's rules cannot tag (:class:`~lmm.data.sources.UnknownSourceError`,
    naming the known ones)."""
    node = dict(plain(node))
    known = {f.name for f in dataclasses.fields(StageMixture)}
    extra = set(node) - known
    if extra:
        raise ValueError(f"unknown key(s) {sorted(extra)} in the stage data config; known: {sorted(known)}")
    check_source_names((node.get("sources") or {}).keys(), node.get("rules", "llava_mix665k"),
                       node.get("unknown_source", "reject"), f"{where}.sources")
    sources = {}
    for name, spec in (node.pop("sources", None) or {}).items():
        spec = dict(spec or {})
        bad = set(spec) - {f.name for f in dataclasses.fields(SourceSpec)}
        if bad:
            raise ValueError(f"source {name!r} has unknown key(s) {sorted(bad)}")
        sources[str(name)] = SourceSpec(name=str(name), **spec)
    return StageMixture(**node, sources=sources)


@dataclass
class SourcedRecord(Record):
    """A record with the source its shard row was tagged with (what the prompt policy looks at)."""

    source: str = ""


def _edit_turns(record: Record, edit: Callable[[str], str]) -> Record:
    turns = [(edit(h), g) for h, g in record.turns]
    return record if turns == record.turns else dataclasses.replace(record, turns=turns)


class FormatPromptPolicy:
    """The per-source response-format prompt policy, as ``SampleProcessor``'s ``prompt_policy`` hook
    (``Record -> Record``). The source comes from :class:`SourcedRecord`; other records pass through unchanged."""

    def __init__(self, specs: Mapping[str, SourceSpec]):
        self.specs = {s: spec for s, spec in specs.items() if spec.format_prompt != "keep"}

    def apply(self, record: Record, source: str) -> Record:
        spec = self.specs.get(source)
        if spec is None:
            return record
        suffix = spec.suffix
        assert suffix is not None

        def edit(text: str) -> str:
            body = text.rstrip()
            if not body.endswith(suffix):
                return text
            head = body[: len(body) - len(suffix)]
            if spec.format_prompt == "strip":
                return head.rstrip()
            return head + (spec.replacement or "")

        return _edit_turns(record, edit)

    def __call__(self, record: Record) -> Record:
        return self.apply(record, getattr(record, "source", ""))
