"""Rendering of the Table-2-in-miniature analysis (:mod:`lmm.tracking.table2_mini`): ``report.md``, ``cells.csv``
and the chart's panels. Everything here is a pure function of the analysis (no clock, no randomness), so the same
job folders give the same bytes."""

from __future__ import annotations

import csv
import io
import statistics
from typing import TYPE_CHECKING

from lmm.tracking.bootstrap import N_BOOT
from lmm.tracking.table2_study import signed

if TYPE_CHECKING:
    from lmm.tracking.table2_analysis import Analysis, Cell

DASH = "–"
CSV_COLUMNS = ["kind", "from", "to", "benchmark", "seen_in_training", "n_seeds", "paired_questions", "delta",
               "ci_low", "ci_high", "paper_from", "paper_to", "paper_delta", "paper_noise_band", "claim",
               "claim_source", "verdict", "prediction", "prediction_check"]


def _md(text: str) -> str:
    """One table cell: no newline, no bare pipe."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _range(values) -> str:
    values = list(values)
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def bench_label(analysis: Analysis, cell: Cell) -> str:
    return analysis.paper.label(cell.bench) + (" (seen in training)" if cell.seen else "")


def delta_text(cell: Cell) -> str:
    iv = cell.interval
    return DASH if iv is None else f"{signed(iv.point)} [{signed(iv.low)}, {signed(iv.high)}]"


def _claim(cell: Cell) -> str:
    return cell.claim_text if cell.claim is None else f"{cell.claim}: {cell.claim_text}"


def _verdict(cell: Cell) -> str:
    return f"**{cell.verdict}**" if cell.verdict in ("reproduced", "contradicted") else cell.verdict


def _prediction(cell: Cell) -> str:
    return DASH if not cell.predicted else ("null" if cell.prediction is None else cell.prediction)


def _header(a: Analysis) -> list[str]:
    usable = a.usable()
    twins = sorted({j.twins for j in usable})
    counts = {b: [len(j.per_question[b]) for j in usable if b in j.per_question] for b in a.study.benchmarks}
    questions = "; ".join(f"{a.paper.label(b)}: {_range(n)} questions" if n else f"{a.paper.label(b)}: none"
                          for b, n in counts.items())
    spans = [j.span for j in a.jobs if j.span]
    wall = (f"(from the Hydra logs of {len(spans)} of {len(a.jobs)} jobs): "
            f"{_minutes(sum(e - s for s, e in spans))} of job time, "
            f"{_minutes(max(e for _, e in spans) - min(s for s, _ in spans))} from the first start to the last end"
            if spans else "not recorded (no Hydra log with timestamps in the job folders)")
    seeds = ", ".join(map(str, a.seeds))
    table2 = {b for e in a.paper.experiments.values() if e.section == "table2" for b in e.scores}
    outside = [a.paper.label(b) for b in a.study.benchmarks if b not in table2]
    no_column = f" (Table 2 has no {' / '.join(outside)} column)" if outside else ""
    md = ["# Table 2 in miniature: the twins vs the paper's directions", "",
          f"- **What ran**: rows {', '.join(a.study.rows)}; seeds {seeds}; {len(usable)} of {len(a.jobs)} job "
          f"folders with eval results, under `{a.sweep}`.",
          f"- **Backbones**: {', '.join(twins) or 'unknown'}. **Benchmarks** (synthetic twins): {questions}.",
          f"- **Calibration**: `{a.calibration_row}` re-run per seed with training_seed_offset "
          f"{a.calibration_offset if a.calibration_offset is not None else '(none found)'}"
          + (f" (the study names `{a.study.calibration}`; the jobs re-ran `{a.calibration_row}`)."
             if a.calibration_row != a.study.calibration else "."),
          f"- **Wall time** {wall}.", f"- Study: `{a.study.path}`; paper: `{a.paper.path}`.", "",
          "> **These are twin numbers: not comparable to the paper's absolute numbers.** Only the *directions* of "
          "the row-to-row changes are compared with the paper's.", "",
          "**How to read.** For a transition a → b and a benchmark, Δ is the mean over seeds of the mean "
          "per-question difference b − a over the questions both runs answered, in points (× 100 of the "
          "per-question score: accuracy / exact match / rule grade; for MME and POPE per-question correctness, not "
          f"the MME score or the F1). The interval is a 95 % hierarchical bootstrap ({N_BOOT:,} draws, seeded): "
          "seeds with replacement, then questions with replacement within each drawn seed, paired between a and b. The paper's "
          "Δ is in the paper's units (GQA %, MME perception score, MM-Vet score); it is a *claim* when the paper "
          "reports both rows and |Δ| exceeds the paper's own noise band, or when the study file names one from the "
          f"paper's text or the row's purpose{no_column}. Verdicts: **reproduced** (the interval "
          "excludes 0 on the claim's side), **contradicted** (on the other side), unresolved (it contains 0), no "
          "claim, no data. Our predictions were written before the runs; a null prediction holds when the interval "
          "contains 0.", ""]
    n_seeds = [c.interval.n_seeds for c in a.cells + a.calibration if c.interval]
    if n_seeds and max(n_seeds) == 1:
        md += ["> **Only one seed**: the seed draw is trivial, so the intervals resample questions only and say "
               "nothing about seed-to-seed variation.", ""]
    elif 1 in n_seeds:
        md += ["> Cells measured at one seed only (seeds column = 1): there the seed draw is trivial and the "
               "interval resamples questions only.", ""]
    return md


def _absolute(a: Analysis) -> list[str]:
    benches = a.study.benchmarks
    lines = ["## Absolute scores per row (twins)", "",
             "Each benchmark's headline score (`eval/<bench>/scores.json`), mean ± sd over seeds (n).", "",
             "| row | " + " | ".join(a.paper.label(b) for b in benches) + " |", "|---|" + "---|" * len(benches)]
    keys = [(row, 0) for row in a.study.rows]
    if a.calibration_offset is not None:
        keys.append((a.calibration_row, a.calibration_offset))
    for row, offset in keys:
        jobs = [j for j in a.usable() if j.row == row and j.offset == offset]
        cells = []
        for b in benches:
            values = [j.headline[b] for j in jobs if b in j.headline]
            if not values:
                cells.append(DASH)
            elif len(values) == 1:
                cells.append(f"{values[0]:.1f} (1)")
            else:
                cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({len(values)})")
        name = f"{row} (training_seed_offset {offset})" if offset else row
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


TABLE = ["| transition | benchmark | Δ [95 % interval] | seeds × questions | paper Δ | paper's claim | verdict | "
         "our prediction | check |", "|---|---|---|---|---|---|---|---|---|"]


def _row(a: Analysis, cell: Cell, transition: str) -> str:
    iv = cell.interval
    size = DASH if iv is None else f"{iv.n_seeds} × {_range(iv.n_questions)}"
    paper = DASH if cell.paper_delta is None else signed(cell.paper_delta)
    return (f"| {transition} | {bench_label(a, cell)} | {delta_text(cell)} | {size} | {paper} | "
            f"{_md(_claim(cell))} | {_verdict(cell)} | {_prediction(cell)} | {cell.check} |")


def _summary(a: Analysis) -> list[str]:
    count = {v: sum(c.verdict == v for c in a.cells)
             for v in ("reproduced", "contradicted", "unresolved", "no claim", "no data")}
    checks = {v: sum(c.check == v for c in a.cells) for v in ("as predicted", "not as predicted")}
    return [f"Of {len(a.cells)} cells: " + ", ".join(f"{n} {v}" for v, n in count.items()) + ". Our predictions: "
            + ", ".join(f"{n} {v}" for v, n in checks.items()) + ".", ""]


def render_report(a: Analysis, chart: str = "chart.png") -> str:
    md = _header(a) + _absolute(a)
    md += ["## Transitions", "", *_summary(a), *TABLE]
    md += [_row(a, c, f"{c.frm} → {c.to}") for c in a.cells]
    md += [""]
    notes = [f"- `{to}`: {_md(note)}" for to, note in a.study.notes.items()]
    md += ["Notes on our predictions:", "", *notes, ""] if notes else []
    md += ["## Calibration (the noise floor)", ""]
    if a.calibration_offset is None:
        md += [f"No calibration job (`{a.calibration_row}` with training_seed_offset ≠ 0) was found.", ""]
    else:
        bad, n = a.calibration_summary()
        md += [f"`{a.calibration_row}` with training_seed_offset 0 → {a.calibration_offset} at the same seed "
               f"(the same world and questions, another training draw): **{bad}/{n} benchmark cells exclude 0** "
               "(expected: none, about 1 in 20 by chance).", "", *TABLE]
        md += [_row(a, c, f"{c.frm} (offset 0 → {a.calibration_offset})") for c in a.calibration] + [""]
    md += ["## Missing jobs", ""]
    md += [f"- {m}" for m in a.missing] if a.missing else ["None: every row has a job with results at every seed."]
    md += ["", "## Chart", "", f"![Δ per transition and benchmark]({chart})", ""]
    return "\n".join(md)


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


def cells_csv(a: Analysis) -> str:
    """One line per cell (transitions, then the calibration)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in a.cells + a.calibration:
        iv = c.interval
        writer.writerow({
            "kind": c.kind, "from": c.frm, "to": c.to, "benchmark": c.bench, "seen_in_training": c.seen,
            "n_seeds": iv.n_seeds if iv else 0, "paired_questions": ";".join(map(str, iv.n_questions)) if iv else "",
            "delta": _num(iv and iv.point), "ci_low": _num(iv and iv.low), "ci_high": _num(iv and iv.high),
            "paper_from": _num(c.paper_scores[0]), "paper_to": _num(c.paper_scores[1]),
            "paper_delta": _num(c.paper_delta), "paper_noise_band": _num(c.band), "claim": c.claim or "",
            "claim_source": " ".join(c.claim_text.split()), "verdict": c.verdict,
            "prediction": "" if not c.predicted else (c.prediction or "null"), "prediction_check": c.check})
    return buf.getvalue()


def chart_panels(a: Analysis) -> dict[str, list[tuple[str, float, float, float, str]]]:
    """Per benchmark label: (transition label, Δ, low, high, verdict) for every cell, NaN where there is no data;
    the calibration last, as verdict ``calibration``."""
    panels: dict[str, list] = {a.paper.label(b): [] for b in a.study.benchmarks}
    for c in a.cells + a.calibration:
        iv, nan = c.interval, float("nan")
        label = f"calib. {c.to}" if c.kind == "calibration" else c.to
        kind = "calibration" if c.kind == "calibration" else c.verdict
        values = (iv.point, iv.low, iv.high) if iv else (nan, nan, nan)
        panels[a.paper.label(c.bench)].append((label, *values, kind))
    return panels
