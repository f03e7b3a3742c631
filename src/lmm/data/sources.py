"""Which source a LLaVA record comes from, by ordered rules on its id, image path and prompt text (spec §2.2).

The 665K mixture has no source field: the source is read off the image folder (``gqa/``, ``ocr_vqa/``,
``textvqa/``, ``vg/``, ``coco/``), the response-format prompt (A-OKVQA's option-letter suffix, the short-answer
suffix, TextCaps' caption prompt) and the region-level prompts (RefCOCO on COCO images). Rules are tried in order and
the first match wins; a rule set is a built-in name or a list of dicts (Hydra config / YAML / JSON file), so a
project can override every rule. A record no rule matches is rejected (``unknown_source``) or tagged, per config.

Known limit: VQAv2 and OKVQA share COCO images and the short-answer suffix, so path + prompt cannot tell them apart;
both are tagged ``vqav2`` unless an override rule (e.g. ``id_prefix`` / ``id_regex``) names OKVQA's samples, placed
before the built-in set: ``[{source: okvqa, id_regex: ...}, {extends: llava_mix665k}]`` (docs/data.md §2). The
synthetic twin's 665K is read that way at ``scale=tiny`` (its OKVQA-like ids are ``okvqa-NNNNNN``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmm.data.records import Record, RecordError
from lmm.text.prompts import OPTION_LETTER, SHORT_ANSWER

REGION_DESCRIPTION = "Please provide a short description for this region:"
REGION_BBOX = "Please provide the bounding box coordinate of the region this sentence describes:"

SOURCES_665K = ("llava_instruct", "sharegpt", "vqav2", "gqa", "okvqa", "ocrvqa", "aokvqa", "textcaps", "refcoco",
                "vg")


@dataclass(frozen=True)
class SourceRule:
    """All given conditions must hold. Prefixes and phrases are alternatives (any of them)."""

    source: str
    image_prefix: tuple[str, ...] = ()   # on the first image path
    prompt_contains: tuple[str, ...] = ()  # in any human turn
    id_prefix: tuple[str, ...] = ()
    id_regex: str | None = None
    has_image: bool | None = None

    def matches(self, record: Record) -> bool:
        if self.has_image is not None and record.has_image != self.has_image:
            return False
        if self.image_prefix and not (record.images and record.images[0].lstrip("./").startswith(self.image_prefix)):
            return False
        if self.id_prefix and not record.id.startswith(self.id_prefix):
            return False
        if self.id_regex is not None and not re.search(self.id_regex, record.id):
            return False
        if self.prompt_contains and not any(p in h for h, _ in record.turns for p in self.prompt_contains):
            return False
        return True


# Records per source of llava_v1_5_mix665k.json (665,298 in all; spec §2.2, issues #702/#657).
MIX665K_COUNTS = {"llava_instruct": 157712, "sharegpt": 40688, "vqav2": 82783, "gqa": 72140, "okvqa": 8998,
                  "ocrvqa": 80000, "aokvqa": 66160, "textcaps": 21953, "refcoco": 48447, "vg": 86417}


def source_counts(total: int) -> dict[str, int]:
    """Per-source sample counts for a ``total``-sample mixture in the 665K shares (every source ≥ 1)."""
    full = sum(MIX665K_COUNTS.values())
    return {s: max(1, round(total * c / full)) for s, c in MIX665K_COUNTS.items()}


def _tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _rule(source: str, image_prefix: Any = (), prompt_contains: Any = (), id_prefix: Any = (),
          id_regex: str | None = None, has_image: bool | None = None) -> SourceRule:
    return SourceRule(str(source), _tuple(image_prefix), _tuple(prompt_contains), _tuple(id_prefix), id_regex,
                      None if has_image is None else bool(has_image))


# llava_v1_5_mix665k.json, laid out as the official playground/data (README "Train"; spec §2.2).
RULES_665K = (
    _rule("sharegpt", has_image=False),
    _rule("gqa", image_prefix="gqa/"),
    _rule("ocrvqa", image_prefix="ocr_vqa/"),
    _rule("textcaps", image_prefix="textvqa/"),
    _rule("vg", image_prefix="vg/"),
    _rule("aokvqa", image_prefix="coco/", prompt_contains=OPTION_LETTER),
    _rule("refcoco", image_prefix="coco/", prompt_contains=(REGION_DESCRIPTION, REGION_BBOX)),
    _rule("vqav2", image_prefix="coco/", prompt_contains=SHORT_ANSWER),  # OKVQA too: see the module docstring
    _rule("llava_instruct", image_prefix="coco/"),
)
# blip_laion_cc_sbu_558k.json: one source, every record has an image.
RULES_558K = (_rule("lcs558k", has_image=True),)
# The synthetic twin: ids are prefixed by their kind (cap-, vqa-, conv-, text-) or by a 665K source name.
RULES_SYNTHETIC = (
    _rule("lcs558k", id_prefix="cap-"),
    _rule("vqav2", id_prefix="vqa-"),
    _rule("llava_instruct", id_prefix="conv-"),
    _rule("sharegpt", id_prefix="text-"),
    *(_rule(s, id_prefix=f"{s}-") for s in SOURCES_665K),
)
RULE_SETS: dict[str, tuple[SourceRule, ...]] = {
    "llava_mix665k": RULES_665K, "lcs558k": RULES_558K, "synthetic": RULES_SYNTHETIC,
}


class UnknownSourceError(ValueError):
    """A source name in a data config that no rule can tag (a typo: ``vqa2``); the message names the known ones."""


def known_sources(rules: str | Sequence[Mapping[str, Any]] | None = None, unknown_source: str = "reject",
                  unknown_name: str = "unknown") -> tuple[str, ...]:
    """The source names a stage's data config may list (sorted): every built-in source (:data:`SOURCES_665K` and
    ``lcs558k``; OKVQA is tagged only by an override rule, see the module docstring), every source ``rules`` names,
    and ``unknown_name`` when unmatched records are tagged (``unknown_source: tag``)."""
    names = {"lcs558k", *SOURCES_665K, *(rule.source for rule in parse_rules(rules))}
    if unknown_source == "tag":
        names.add(unknown_name)
    return tuple(sorted(names))


def check_source_names(names: Iterable[str], rules: Any = None, unknown_source: str = "reject",
                       where: str = "sources") -> None:
    """:class:`UnknownSourceError` for the first of ``names`` that :func:`known_sources` does not hold, naming the
    key (``<where>.<name>``) and the known ones."""
    names = list(names)
    if not names:
        return
    known = known_sources(rules, unknown_source)
    for name in names:
        if name not in known:
            rule_set = f" (rules {rules})" if isinstance(rules, str) else ""
            raise UnknownSourceError(
                f"{where}.{name}: unknown source {name!r} — the known ones{rule_set}: {', '.join(known)}; a source "
                f"of your own needs a rule that tags it (docs/data.md §2)")


def parse_rules(spec: str | Sequence[Mapping[str, Any]] | None) -> tuple[SourceRule, ...]:
    """A built-in rule-set name, a path to a YAML/JSON list of rule dicts, or such a list itself. A list entry
    ``{extends: <name or file>}`` splices that whole set at its place, so a project's rules can go before the
    built-in ones without copying them (the twin's OKVQA rule before ``llava_mix665k``: ``conf/scale/tiny.yaml``)."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        if spec in RULE_SETS:
            return RULE_SETS[spec]
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"unknown source rule set {spec!r}: not a file, and not one of {sorted(RULE_SETS)}")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
        if not isinstance(spec, list):
            raise ValueError(f"{path} must hold a list of source rules")
    rules = []
    for k, item in enumerate(spec):
        item = dict(item)
        if "extends" in item:  # {"extends": "llava_mix665k"} splices a built-in set (or a rule file) here
            if len(item) > 1:
                raise ValueError(f"source rule {k}: 'extends' stands alone (it splices a whole rule set); move "
                                 f"{sorted(set(item) - {'extends'})} into a rule of its own")
            try:
                rules.extend(parse_rules(str(item["extends"])))
            except ValueError as e:
                raise ValueError(f"source rule {k}: {e}") from None
            continue
        if "source" not in item:
            raise ValueError(f"source rule {k} has no 'source': {item}")
        unknown = set(item) - set(SourceRule.__dataclass_fields__)
        if unknown:
            raise ValueError(f"source rule {k} has unknown field(s) {sorted(unknown)}; known: "
                             f"{sorted(SourceRule.__dataclass_fields__)}")
        rules.append(_rule(item.pop("source"), **item))
    return tuple(rules)


class SourceTagger:
    """``tagger(record) -> source``; an unmatched record raises ``RecordError(id, "unknown_source")`` or, with
    ``unknown="tag"``, is tagged ``unknown_name``. No rules at all tags everything ``unknown_name``."""

    def __init__(self, rules: str | Sequence[Mapping[str, Any]] | Iterable[SourceRule] | None,
                 unknown: str = "reject", unknown_name: str = "unknown"):
        if unknown not in ("reject", "tag"):
            raise ValueError(f"unknown_source must be 'reject' or 'tag', got {unknown!r}")
        if isinstance(rules, str) or rules is None:
            self.rules = parse_rules(rules)
        else:
            items = list(rules)
            self.rules = tuple(items) if all(isinstance(r, SourceRule) for r in items) else parse_rules(items)
        self.unknown, self.unknown_name = unknown, unknown_name

    def __call__(self, record: Record) -> str:
        for rule in self.rules:
            if rule.matches(record):
                return rule.source
        if self.unknown == "tag" or not self.rules:
            return self.unknown_name
        where = record.images[0] if record.images else "no image"
        raise RecordError(record.id, "unknown_source", f"no source rule matches ({where})")
