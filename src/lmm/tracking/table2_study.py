"""The Table-2-in-miniature study file (``experiments/table2_mini.yaml``) and the rules that judge one cell.

The study names the benchmarks (report order), the paper's own run-to-run noise per benchmark (``paper_noise``), the
row transitions, the calibration row, the paper's claims Table 2 has no column for (``paper_claims``) and our
predictions, written before the runs. A cell is one transition × one benchmark; :func:`paper_claim` says what the
paper claims for it, :func:`verdict` whether our interval reproduces that claim, :func:`prediction_check` whether it
is what we predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmm.tracking.bootstrap import Interval
from lmm.tracking.paper import BENCHMARKS, PaperResults

DIRECTIONS = ("up", "down")
SIGN = {"up": 1, "down": -1}


class StudyError(ValueError):
    """The study file is missing or does not follow the schema."""


@dataclass(frozen=True)
class Claim:
    direction: str | None   # up / down, or None: no claim
    text: str               # e.g. "up — Table 2 Δ +387.4 beyond its ±20 noise", "no claim — not in Table 2"
    paper_delta: float | None
    band: float | None


@dataclass
class Study:
    path: Path
    benchmarks: list[str]
    noise: dict[str, dict[str, Any]]
    transitions: list[tuple[str, str]]
    calibration: str
    claims: dict[str, dict[str, dict[str, str]]]
    predictions: dict[str, dict[str, str | None]]
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> list[str]:
        """Every row of the transitions, in order of first appearance."""
        return list(dict.fromkeys(r for t in self.transitions for r in t))


def default_study_file() -> Path:
    return Path.cwd() / "experiments" / "table2_mini.yaml"


def _mapping(value, where: str, path: Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{path}: {where} must be a mapping, not {type(value).__name__}")
    return value


def load_study(path: str | Path | None = None) -> Study:
    """Read and check the study file; every problem is a :class:`StudyError` naming the key at fault."""
    path = Path(path) if path else default_study_file()
    if not path.exists():
        raise StudyError(f"study file not found: {path} (expected experiments/table2_mini.yaml; pass --study)")
    try:
        raw = _mapping(yaml.safe_load(path.read_text()), "the file", path)
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML ({e})") from e
    benchmarks = list(raw.get("benchmarks") or [])
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if not benchmarks or unknown:
        raise StudyError(f"{path}: benchmarks must list known benchmarks ({', '.join(BENCHMARKS)}); "
                         f"got {unknown or 'none'}")
    noise = _mapping(raw.get("paper_noise"), "paper_noise", path)
    for bench, spec in noise.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("band"), (int, float)) or spec["band"] < 0:
            raise StudyError(f"{path}: paper_noise.{bench} needs a band >= 0 in the paper's units")
    transitions = []
    for i, t in enumerate(raw.get("transitions") or []):
        if not isinstance(t, dict) or not t.get("from") or not t.get("to"):
            raise StudyError(f"{path}: transitions[{i}] needs from and to rows")
        transitions.append((str(t["from"]), str(t["to"])))
    if not transitions:
        raise StudyError(f"{path}: transitions is empty")
    rows = {r for t in transitions for r in t}
    tos = [to for _, to in transitions]
    calibration = str(raw.get("calibration") or "")
    if calibration not in rows:
        raise StudyError(f"{path}: calibration row {calibration or '(none)'} is in no transition")
    claims = _mapping(raw.get("paper_claims"), "paper_claims", path)
    for to, cells in claims.items():
        if to not in tos:
            raise StudyError(f"{path}: paper_claims.{to}: no transition leads to that row")
        for bench, spec in _mapping(cells, f"paper_claims.{to}", path).items():
            where = f"paper_claims.{to}.{bench}"
            if not isinstance(spec, dict) or spec.get("direction") not in DIRECTIONS:
                raise StudyError(f"{path}: {where}: direction must be up or down")
            if not spec.get("source"):
                raise StudyError(f"{path}: {where}: a claim needs its source")
    predictions, notes = {}, {}
    for to, cells in _mapping(raw.get("predictions"), "predictions", path).items():
        if to not in tos:
            raise StudyError(f"{path}: predictions.{to}: no transition leads to that row")
        cells = dict(_mapping(cells, f"predictions.{to}", path))
        if "note" in cells:
            notes[to] = str(cells.pop("note"))
        for bench, value in cells.items():
            if value is not None and value not in DIRECTIONS:
                raise StudyError(f"{path}: predictions.{to}.{bench} must be up, down or null, not {value!r}")
        predictions[to] = cells
    return Study(path=path, benchmarks=benchmarks, noise=noise, transitions=transitions, calibration=calibration,
                 claims=claims, predictions=predictions, notes=notes)


def signed(v: float, digits: int = 1) -> str:
    """``+1.2`` / ``-0.4`` (never ``-0.0``)."""
    v = round(v, digits) + 0.0
    return f"{v:+.{digits}f}"


def _band(v: float) -> str:
    return f"{v:g}"


def paper_claim(study: Study, paper: PaperResults, frm: str, to: str, bench: str) -> Claim:
    """(i) the sign of Table 2's Δ where the paper reports both rows and |Δ| exceeds its noise band; else (ii) the
    study's ``paper_claims`` for the cell; else no claim, and why."""
    a, b = paper.score(frm, bench), paper.score(to, bench)
    delta = None if a is None or b is None else b - a
    spec = (study.noise.get(bench) or {})
    band = float(spec["band"]) if "band" in spec else None
    if delta is not None and abs(delta) > (band or 0.0):
        beyond = f" beyond its ±{_band(band)} noise" if band is not None else " (no noise band in the study)"
        return Claim("up" if delta > 0 else "down", f"Table 2 Δ {signed(delta)}{beyond}", delta, band)
    text = ((study.claims.get(to) or {}).get(bench) or {})
    if text:
        return Claim(text["direction"], str(text["source"]), delta, band)
    if delta is not None:
        return Claim(None, f"no claim — paper Δ {signed(delta)} within its ±{_band(band or 0.0)} noise", delta, band)
    entries = [paper.experiments.get(r) for r in (frm, to)]
    if all(e is not None and bench in e.scores for e in entries):   # a Table 2 column with a '–' cell
        gap = [r for r, e in zip((frm, to), entries) if e.scores[bench] is None]
        return Claim(None, f"no claim — Table 2 has no {paper.label(bench)} for {' and '.join(gap)}", None, band)
    return Claim(None, "no claim — not in Table 2", None, band)


def verdict(claim: Claim, interval: Interval | None) -> str:
    """reproduced / contradicted / unresolved against the claim; ``no claim`` / ``no data`` otherwise."""
    if interval is None:
        return "no data"
    if claim.direction is None:
        return "no claim"
    side = interval.side()
    return "unresolved" if side == 0 else "reproduced" if side == SIGN[claim.direction] else "contradicted"


def prediction_check(prediction: str | None, predicted: bool, interval: Interval | None) -> str:
    """``as predicted`` / ``not as predicted``; a null prediction holds when the interval contains 0."""
    if not predicted:
        return "no prediction"
    if interval is None:
        return "no data"
    expected = 0 if prediction is None else SIGN[prediction]
    return "as predicted" if interval.side() == expected else "not as predicted"
