"""Samples, steps and tokens per sample of a stage, for the pre-flight plan (:mod:`lmm.training.plan`).

* **Measured** when the stage's data were converted: the manifest (:mod:`lmm.data.manifest`) of
  ``data.<stage>.shards``, or of the on-demand conversion of ``data.<stage>.json`` under
  ``<data.shard_cache>/shards/<stage>-*`` (matched by the source file's path, size and mtime). Per sample: text
  tokens = the manifest's ``tokens`` less its image markers, LLM length ``T = min(max_length, text + images ×
  image_tokens)``.
* **Estimated** otherwise: sample counts from ``data.<stage>.sources.*.count`` (spec §2.2's figures where a count is
  null: VQAv2 82,783, OKVQA 8,998; a synthetic twin's own sizes at ``scale=tiny``) and text tokens per source from
  ``preflight.text_tokens`` (documented in ``docs/preflight.md``); the sources in
  ``preflight.text_only_sources`` carry no image.

Label tokens (the positions training's label-only LM head runs at, :mod:`lmm.training.plan_costs`) are the text
tokens times ``preflight.label_share.<source>`` (``default`` for a source not listed) — the share of a source's text
its template labels (answers and their end-of-turn tokens); manifests do not count labels. The peak is that share of
the source's longest text, as truncated at ``max_length``.

Either way a source counts when included (``include``, else ``default_include`` for sources the config does not
list), times its ``subsample`` (or the stage's) and ``weight``. Steps = ``ceil(N / global_batch) × epochs`` as HF's
Trainer counts them for LLaVA (665,298 / 128 → 5,198), or ``max_steps`` when > 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmm.common import plain
from lmm.data.manifest import MANIFEST_NAME
from lmm.data.sources import MIX665K_COUNTS, source_counts
from lmm.training.plan_costs import PlanError

SPEC_COUNTS = {"lcs558k": 558128, **MIX665K_COUNTS}  # spec §2.2 (the maintainer's exact counts, issues #702 / #657)
CONVERT_NAME = "convert.json"  # lmm.data.shards' fingerprint of a conversion


@dataclass
class SourceStats:
    n: int = 0
    text: float = 0.0      # Σ text tokens
    seq: float = 0.0       # Σ T
    seq_sq: float = 0.0    # Σ T²
    images: float = 0      # samples with an image
    peak: int = 0          # max T
    text_peak: int = 0     # max text tokens
    kept: float = 0.0      # Σ text tokens kept after truncation at max_length
    kept_peak: int = 0     # max of those

    def add(self, text: int, n_images: int, image_tokens: int, max_length: int) -> None:
        t = min(max_length, text + n_images * image_tokens)
        kept = max(0, t - n_images * image_tokens)
        self.n += 1
        self.text += text
        self.seq += t
        self.seq_sq += t * t
        self.images += int(n_images > 0)
        self.peak = max(self.peak, t)
        self.text_peak = max(self.text_peak, text)
        self.kept += kept
        self.kept_peak = max(self.kept_peak, kept)


@dataclass(frozen=True)
class StageData:
    samples: int
    text_mean: float
    text_peak: int
    seq_mean: float
    seq_sq_mean: float
    seq_peak: int
    image_share: float
    origin: str
    per_source: dict[str, int] = field(default_factory=dict)
    labels_mean: float = 0.0   # label tokens per sample (the LM head's positions on the training path)
    labels_peak: float = 0.0   # the most one sample can have (its source's share of its longest kept text)


def find_manifest(data_cfg: dict, stage: str) -> Path | None:
    """The manifest of the stage's converted shards, or None when they were not converted (yet)."""
    node = data_cfg.get(stage) or {}
    if node.get("shards"):
        path = Path(node["shards"]) / MANIFEST_NAME
        return path if path.is_file() else None
    src = Path(node["json"]) if node.get("json") else None
    if src is None or not src.is_file():
        return None
    st, want = src.stat(), str(src.resolve())
    cache = Path(data_cfg.get("shard_cache") or Path.home() / ".cache" / "lmm") / "shards"
    found = []
    for conv in cache.glob(f"{stage}-*/{CONVERT_NAME}"):
        try:
            fp = json.loads(conv.read_text())
        except (OSError, ValueError):
            continue
        manifest = conv.parent / MANIFEST_NAME
        if (fp.get("json"), fp.get("size"), fp.get("mtime_ns")) == (want, st.st_size, st.st_mtime_ns) \
                and manifest.is_file():
            found.append(manifest)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def manifest_stats(path: Path, image_tokens: int, max_length: int) -> dict[str, SourceStats] | None:
    """Per-source statistics of a manifest's rows; None when it holds no token counts (converted without a
    tokenizer)."""
    stats: dict[str, SourceStats] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            tokens = int(row.get("tokens", -1))
            if tokens < 0:
                return None
            n_img = int(row.get("n_images", 0))
            stats.setdefault(row["source"], SourceStats()).add(tokens - n_img, n_img, image_tokens, max_length)
    return stats


def _text_estimate(pre: dict, stage: str, source: str) -> tuple[float, int]:
    tt = pre.get("text_tokens") or {}
    node = tt.get(stage) or {}
    mean = node.get("mean", tt.get("default_mean", 256))
    if isinstance(mean, dict):
        mean = mean.get(source, tt.get("default_mean", 256))
    return float(mean), int(node.get("peak", mean))


def label_share(pre: dict, source: str) -> float:
    """The share of ``source``'s text tokens its template labels (``preflight.label_share``; module docstring)."""
    shares = pre.get("label_share") or {}
    share = float(shares.get(source, shares.get("default", 0.5)))
    if not 0.0 <= share <= 1.0:
        raise PlanError(f"preflight.label_share.{source if source in shares else 'default'} = {share} is not a "
                        f"share: set a value in [0, 1]")
    return share


def _twin_counts(data_cfg: dict, stage: str, sources: list[str]) -> dict[str, int] | None:
    """A synthetic twin's sample counts per source (``scale=tiny`` before its conversion), or None for real data."""
    twin = data_cfg.get("twin") or {}
    if not twin.get("enabled"):
        return None
    total = int(twin.get(f"n_{stage}", 0))
    if twin.get("writer", "llava") == "llava":
        return {s: total for s in sources[:1]} if stage == "pretrain" else source_counts(total)
    return {s: total // len(sources) + (k < total % len(sources)) for k, s in enumerate(sources)}


def config_stats(data_cfg: dict, pre: dict, stage: str, image_tokens: int, max_length: int) -> tuple[
        dict[str, SourceStats], str]:
    """Per-source statistics estimated from the config (module docstring)."""
    node = data_cfg.get(stage) or {}
    listed = list((node.get("sources") or {}).keys())
    twin = _twin_counts(data_cfg, stage, listed)
    text_only = set(pre.get("text_only_sources") or [])
    stats, notes = {}, []
    for s, spec in (node.get("sources") or {}).items():
        spec = spec or {}
        n = (twin or {}).get(s) if twin is not None else (spec.get("count") or SPEC_COUNTS.get(s))
        if n is None:
            raise PlanError(f"data.{stage}.sources.{s} has no count and spec §2.2 has none: set "
                            f"data.{stage}.sources.{s}.count")
        if twin is None and spec.get("count") is None:
            notes.append(f"{s} {n:,} (spec §2.2)")
        text, peak_text = _text_estimate(pre, stage, s)
        img = 0 if s in text_only else 1
        t = min(max_length, text + img * image_tokens)
        room = max(0, max_length - img * image_tokens)
        stats[s] = SourceStats(int(n), text * n, t * n, t * t * n, img * int(n),
                               min(max_length, peak_text + img * image_tokens), peak_text,
                               min(text, room) * n, min(peak_text, room))
    origin = "estimate: " + ("synthetic twin's sizes, " if twin is not None else "") + "preflight.text_tokens"
    return stats, origin + (f"; null counts from {', '.join(notes)}" if notes else "")


def stage_data(cfg: Any, stage: str, image_tokens: int) -> StageData:
    """Samples and token statistics of ``stage`` (module docstring)."""
    data_cfg, pre = plain(cfg.data), plain(cfg.get("preflight") or {})
    max_length = int(cfg.model.max_length)
    manifest = find_manifest(data_cfg, stage)
    stats = manifest_stats(manifest, image_tokens, max_length) if manifest is not None else None
    if stats is not None:
        origin = f"measured: {manifest}"
    else:
        stats, origin = config_stats(data_cfg, pre, stage, image_tokens, max_length)
    node = data_cfg.get(stage) or {}
    specs = node.get("sources") or {}
    ratio, default_include = float(node.get("subsample", 1.0)), bool(node.get("default_include", True))
    tot, weighted = SourceStats(), 0.0
    labels, labels_peak = 0.0, 0.0
    per_source: dict[str, int] = {}
    for s, st in stats.items():
        spec = specs.get(s) or {}
        if not (spec.get("include", True) if s in specs else default_include) or st.n == 0:
            continue
        r = spec.get("subsample")
        f = (ratio if r is None else float(r)) * float(spec.get("weight", 1.0))
        per_source[s] = round(st.n * f)
        weighted += st.n * f
        tot.text += st.text * f
        tot.seq += st.seq * f
        tot.seq_sq += st.seq_sq * f
        tot.images += st.images * f
        tot.peak, tot.text_peak = max(tot.peak, st.peak), max(tot.text_peak, st.text_peak)
        share = label_share(pre, s)
        labels += share * st.kept * f
        labels_peak = max(labels_peak, share * st.kept_peak)
    if weighted == 0:
        raise PlanError(f"data.{stage}: no samples selected for stage {stage} (every source excluded or empty): "
                        f"include a source (data.{stage}.sources.<source>.include=true)")
    return StageData(samples=sum(per_source.values()), text_mean=tot.text / weighted, text_peak=tot.text_peak,
                     seq_mean=tot.seq / weighted, seq_sq_mean=tot.seq_sq / weighted, seq_peak=tot.peak,
                     image_share=tot.images / weighted, origin=origin, per_source=per_source,
                     labels_mean=labels / weighted, labels_peak=labels_peak)


def stage_steps(samples: int, global_batch: int, epochs: int, max_steps: int = -1) -> int:
    """Optimizer steps: ``max_steps`` when > 0, else ``ceil(samples / global_batch) × epochs``."""
    if max_steps and max_steps > 0:
        return int(max_steps)
    return math.ceil(samples / global_batch) * int(epochs)
