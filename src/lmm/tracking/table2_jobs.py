"""The job folders of a Table-2-in-miniature sweep, read from disk (MLflow is only an output of the report).

A job folder is any folder under the sweep holding ``.hydra/config.yaml`` (Hydra multirun: ``<sweep>/<job_num>/``);
from its resolved config come the row (``logger.tags.experiment``), ``seed`` and ``training_seed_offset`` (absent =
0), and from ``eval/<bench>/per_question.json`` (``{"benchmark", "unit", "scores": {key: 0..1}}``) the per-question
scores, with ``eval/<bench>/scores.json``'s headline ``score`` beside them. Wall time comes from the first and last
timestamps of the job's Hydra log (``<job>/*.log``) when it has one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

LOG_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,(\d{1,6}))?\]")


@dataclass
class Job:
    folder: Path
    name: str                 # the folder relative to the sweep (its job number in a Hydra multirun)
    row: str | None
    seed: int | None
    offset: int
    twins: str                # "pretrained twins" / "random twins" / "real backbones"
    per_question: dict[str, dict[str, float]] = field(default_factory=dict)
    headline: dict[str, float] = field(default_factory=dict)
    span: tuple[float, float] | None = None   # first and last log timestamps (s)
    problems: list[str] = field(default_factory=list)

    @property
    def has_results(self) -> bool:
        return bool(self.per_question)

    @property
    def key(self) -> tuple[str | None, int | None, int]:
        return self.row, self.seed, self.offset

    def label(self) -> str:
        return f"`{self.name}` ({self.row or 'no experiment tag'}, seed {self.seed})"


def _twins(cfg: dict) -> str:
    model = cfg.get("model") or {}
    if not model.get("twin"):
        return "real backbones"
    blocks = [((model.get(part) or {}).get("twin") or {}).get("pretrain") for part in ("vision", "llm")]
    return "pretrained twins" if all(blocks) else "random twins" if not any(blocks) else "partly pretrained twins"


def _log_span(folder: Path) -> tuple[float, float] | None:
    stamps = []
    for log in sorted(folder.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = LOG_STAMP.match(line)
            if m:
                frac = float(f"0.{m.group(2)}") if m.group(2) else 0.0
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
                stamps.append(t.timestamp() + frac)
    if len(stamps) < 2:
        return None
    return min(stamps), max(stamps)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_job(folder: Path, sweep: Path, benchmarks: list[str]) -> Job:
    """One job folder; what cannot be read is a ``problem`` of the job, never an exception."""
    name = str(folder.relative_to(sweep)) if folder != sweep else "."
    try:
        cfg = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        return Job(folder=folder, name=name, row=None, seed=None, offset=0, twins="unknown",
                   problems=[f".hydra/config.yaml unreadable ({type(e).__name__})"])
    tags = (cfg.get("logger") or {}).get("tags") or {}
    seed = cfg.get("seed")
    job = Job(folder=folder, name=name, row=tags.get("experiment"), seed=int(seed) if isinstance(seed, int) else None,
              offset=int(cfg.get("training_seed_offset") or 0), twins=_twins(cfg), span=_log_span(folder))
    if job.row is None:
        job.problems.append("no logger.tags.experiment in .hydra/config.yaml")
    if job.seed is None:
        job.problems.append("no integer seed in .hydra/config.yaml")
    for bench in benchmarks:
        per_q = _read_json(folder / "eval" / bench / "per_question.json")
        scores = (per_q or {}).get("scores")
        if isinstance(scores, dict) and scores:
            job.per_question[bench] = {str(k): float(v) for k, v in scores.items()}
        headline = (_read_json(folder / "eval" / bench / "scores.json") or {}).get("score")
        if isinstance(headline, (int, float)):
            job.headline[bench] = float(headline)
        elif bench in job.per_question:
            values = job.per_question[bench].values()
            job.headline[bench] = 100 * sum(values) / len(values)
    return job


def find_jobs(sweep: str | Path, benchmarks: list[str]) -> list[Job]:
    """Every job folder under ``sweep``, in a stable order (job numbers numerically)."""
    sweep = Path(sweep)
    folders = {p.parent.parent for p in sweep.rglob(".hydra/config.yaml")}

    def order(p: Path):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in p.relative_to(sweep).parts]

    return [read_job(f, sweep, benchmarks) for f in sorted(folders, key=order)]
