"""Table 2 in miniature, the analysis: every cell (transition × benchmark, and the calibration) of the study from
the job folders of a sweep — the paired per-question Δ with its hierarchical-bootstrap interval
(:mod:`lmm.tracking.bootstrap`), the paper's claim, the verdict and the check of our prediction
(:mod:`lmm.tracking.table2_study`), and what is missing. Rendered by :mod:`lmm.tracking.table2_report`; the CLI is
:mod:`lmm.tracking.table2_mini`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lmm.tracking.bootstrap import N_BOOT, Interval, hierarchical_bootstrap, paired_differences
from lmm.tracking.paper import PaperResults
from lmm.tracking.table2_jobs import Job, find_jobs
from lmm.tracking.table2_study import Claim, Study, paper_claim, prediction_check, verdict

BOOT_SEED = 23            # the bootstrap's seed (with a hash of the cell): the report is the same on every run


class Table2Error(ValueError):
    """The sweep cannot be reported (no job with results, two jobs for one row and seed)."""


@dataclass
class Cell:
    """One transition (or the calibration) × one benchmark."""

    kind: str                    # "transition" | "calibration"
    frm: str
    to: str
    bench: str
    interval: Interval | None
    claim: str | None
    claim_text: str
    paper_delta: float | None
    band: float | None
    verdict: str
    prediction: str | None
    predicted: bool
    check: str
    seen: bool
    paper_scores: tuple[float | None, float | None] = (None, None)

    @property
    def metric_key(self) -> str:
        return f"{'calibration' if self.kind == 'calibration' else self.to}/{self.bench}"


@dataclass
class Analysis:
    sweep: Path
    study: Study
    paper: PaperResults
    jobs: list[Job]
    seeds: list[int]
    cells: list[Cell]
    calibration: list[Cell]
    calibration_offset: int | None
    calibration_row: str        # the row the jobs re-ran with training_seed_offset ≠ 0 (else the study's)
    missing: list[str] = field(default_factory=list)

    def calibration_summary(self) -> tuple[int, int]:
        """(benchmark cells of the calibration whose interval excludes 0, cells with data)."""
        measured = [c for c in self.calibration if c.interval is not None]
        return sum(c.interval.side() != 0 for c in measured), len(measured)

    def usable(self) -> list[Job]:
        return [j for j in self.jobs if j.has_results and not j.problems]


def _index(jobs: list[Job]) -> dict[tuple, Job]:
    index: dict[tuple, Job] = {}
    for job in jobs:
        if job.key in index:
            raise Table2Error(f"two job folders with eval results for {job.row}, seed {job.seed}, "
                              f"training_seed_offset {job.offset}: {index[job.key].folder} and {job.folder}; "
                              "report one sweep at a time")
        index[job.key] = job
    return index


def _interval(index: dict, a: tuple, b: tuple, bench: str, seeds: list[int], label: str) -> Interval | None:
    diffs = []
    for seed in seeds:
        ja, jb = index.get((a[0], seed, a[1])), index.get((b[0], seed, b[1]))
        if ja is None or jb is None or bench not in ja.per_question or bench not in jb.per_question:
            continue
        try:
            diffs.append(paired_differences(ja.per_question[bench], jb.per_question[bench]))
        except ValueError:
            continue
    if not diffs:
        return None
    return hierarchical_bootstrap(diffs, N_BOOT, seed=[BOOT_SEED, zlib.crc32(f"{label}/{bench}".encode())])


def _cell(study: Study, paper: PaperResults, kind: str, frm: str, to: str, bench: str,
          interval: Interval | None) -> Cell:
    entry = paper.experiments.get(to)
    if kind == "calibration":   # the same row twice: the paper makes no claim; the interval should contain 0
        claim = Claim(None, "no claim — the same row, another training draw (its interval should contain 0)",
                      None, None)
        prediction, predicted = None, True
    else:
        claim = paper_claim(study, paper, frm, to, bench)
        cells = study.predictions.get(to) or {}
        prediction, predicted = cells.get(bench), bench in cells
    return Cell(kind=kind, frm=frm, to=to, bench=bench, interval=interval, claim=claim.direction,
                claim_text=claim.text, paper_delta=claim.paper_delta, band=claim.band,
                verdict=verdict(claim, interval), prediction=prediction, predicted=predicted,
                check=prediction_check(prediction, predicted, interval),
                seen=bool(entry and bench in entry.seen_in_training),
                paper_scores=(paper.score(frm, bench), paper.score(to, bench)))


def _missing(jobs: list[Job], study: Study, seeds: list[int], calib: str, offset: int | None) -> list[str]:
    out = []
    for job in jobs:
        if job.problems:
            out.append(f"{job.label()}: " + "; ".join(job.problems))
        elif not job.has_results:
            out.append(f"{job.label()}: no eval results (failed or still running)")
        else:
            out += [f"{job.label()}: no per-question scores for {b}" for b in study.benchmarks
                    if b not in job.per_question]
    present = {j.key for j in jobs}
    out += [f"{row}, seed {seed}: no job folder" for row in study.rows for seed in seeds
            if (row, seed, 0) not in present]
    if offset is None:
        out.append(f"calibration: no job with training_seed_offset ≠ 0 for {calib}")
    else:
        out += [f"{calib} (training_seed_offset {offset}), seed {seed}: no job folder" for seed in seeds
                if (calib, seed, offset) not in present]
    return out


def analyse(sweep: str | Path, study: Study, paper: PaperResults) -> Analysis:
    """Every cell of the study from the job folders under ``sweep``."""
    sweep = Path(sweep)
    jobs = find_jobs(sweep, study.benchmarks)
    usable = [j for j in jobs if j.has_results and not j.problems]
    if not usable:
        raise Table2Error(f"no job with eval results under {sweep} (expected <job>/.hydra/config.yaml and "
                          f"<job>/eval/<bench>/per_question.json; {len(jobs)} job folder(s) found)")
    index = _index(usable)
    seeds = sorted({j.seed for j in jobs if j.seed is not None})
    cells = [_cell(study, paper, "transition", frm, to, bench,
                   _interval(index, (frm, 0), (to, 0), bench, seeds, f"{frm}>{to}"))
             for frm, to in study.transitions for bench in study.benchmarks]
    re_run = sorted({j.row for j in jobs if j.offset and j.row})   # the jobs say which row was re-run
    row = study.calibration if study.calibration in re_run or not re_run else re_run[0]
    offsets = sorted({j.offset for j in jobs if j.row == row and j.offset})
    offset = offsets[0] if offsets else None
    calibration = [] if offset is None else [
        _cell(study, paper, "calibration", row, row, bench,
              _interval(index, (row, 0), (row, offset), bench, seeds, f"{row}>{row}+{offset}"))
        for bench in study.benchmarks]
    return Analysis(sweep=sweep, study=study, paper=paper, jobs=jobs, seeds=seeds, cells=cells,
                    calibration=calibration, calibration_offset=offset, calibration_row=row,
                    missing=_missing(jobs, study, seeds, row, offset))
