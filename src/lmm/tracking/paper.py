"""The paper's reported numbers (``experiments/paper_results.yaml``) as a small, checked object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCHMARKS = ("vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn",
              "seed", "llava_wild", "mmvet")
POPE_SPLITS = ("pope_rand", "pope_pop", "pope_adv")


# The split of the paper's number where a benchmark has several (our default for these is val: test-dev answers are
# scored on EvalAI only), with the names our benchmarks give it. A number of ours from another split is labelled.
PAPER_SPLITS = {"vqav2": ("test-dev",), "vizwiz": ("test-dev", "test")}


def is_paper_split(bench: str, split: str | None) -> bool:
    """Whether a score of ours on ``split`` of ``bench`` is on the paper's split (a benchmark with one split, or a
    run that names none, is)."""
    return split is None or bench not in PAPER_SPLITS or split.replace("_", "-") in PAPER_SPLITS[bench]


def default_paper_file() -> Path:
    """``experiments/paper_results.yaml`` of the working directory, else of this package's checkout."""
    here = Path.cwd() / "experiments" / "paper_results.yaml"
    if here.exists():
        return here
    return Path(__file__).resolve().parents[3] / "experiments" / "paper_results.yaml"


@dataclass
class PaperEntry:
    name: str
    section: str
    paper_row: str
    label: str
    source: str
    scores: dict[str, float | None]
    derived: set[str] = field(default_factory=set)
    seen_in_training: set[str] = field(default_factory=set)
    note: str = ""


@dataclass
class PaperResults:
    path: Path
    benchmarks: dict[str, dict[str, str]]
    sections: dict[str, str]
    experiments: dict[str, PaperEntry]
    sources: dict[str, dict[str, str]]
    data_efficiency: dict[str, Any]
    llm_choice: dict[str, Any]

    def label(self, bench: str) -> str:
        return self.benchmarks.get(bench, {}).get("label", bench)

    def score(self, experiment: str, bench: str) -> float | None:
        entry = self.experiments.get(experiment)
        return None if entry is None else entry.scores.get(bench)

    def order(self) -> list[str]:
        return list(self.experiments)


def load_paper_results(path: str | Path | None = None) -> PaperResults:
    """Read and check the paper's numbers; POPE's headline is derived (mean of the split F1s) where asked."""
    path = Path(path) if path else default_paper_file()
    if not path.exists():
        raise FileNotFoundError(f"paper results not found: {path} (expected experiments/paper_results.yaml)")
    raw = yaml.safe_load(path.read_text())
    benchmarks = raw.get("benchmarks") or {}
    unknown = set(benchmarks) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"{path}: unknown benchmark keys {sorted(unknown)}")
    sections = raw.get("sections") or {}
    experiments: dict[str, PaperEntry] = {}
    for name, spec in (raw.get("experiments") or {}).items():
        scores = dict(spec.get("scores") or {})
        bad = set(scores) - set(BENCHMARKS)
        if bad:
            raise ValueError(f"{path}: {name} has unknown benchmarks {sorted(bad)}")
        if spec.get("section") not in sections:
            raise ValueError(f"{path}: {name} names an unknown section {spec.get('section')!r}")
        derived = set()
        subs = spec.get("sub_scores") or {}
        if spec.get("derive_pope_mean"):
            if scores.get("pope") is not None or not all(subs.get(k) is not None for k in POPE_SPLITS):
                raise ValueError(f"{path}: {name}: derive_pope_mean needs the three POPE splits "
                                 "and no pope score")
            scores["pope"] = round(sum(subs[k] for k in POPE_SPLITS) / len(POPE_SPLITS), 1)
            derived.add("pope")
        experiments[name] = PaperEntry(
            name=name, section=spec["section"], paper_row=str(spec.get("paper_row", "")),
            label=spec.get("label", name), source=str(spec.get("source", "")),
            scores={k: (None if v is None else float(v)) for k, v in scores.items()}, derived=derived,
            seen_in_training=set(spec.get("seen_in_training") or ()),
            note=str(spec.get("note") or "").strip())
    return PaperResults(path=path, benchmarks=benchmarks, sections=sections, experiments=experiments,
                        sources=raw.get("sources") or {}, data_efficiency=raw.get("data_efficiency") or {},
                        llm_choice=raw.get("llm_choice") or {})
