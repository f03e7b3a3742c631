"""Ours vs the paper: read runs from MLflow, put the paper's numbers beside ours, write ``report.md`` + PNGs.

    python -m lmm.tracking.compare [--root .] [--tracking-uri URI ...] [--out outputs/compare] [--latest]

Stores default to the project's ``mlflow.db`` and any older ``outputs/*/mlflow.db`` / ``multirun/*/mlflow.db``
under ``--root`` (a run merged into the project store counts once). The paper's numbers come from ``experiments/paper_results.yaml``. Exit codes: 0 report written, 2 no runs (or no store)
found.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lmm.tracking import charts
from lmm.tracking.paper import BENCHMARKS, PAPER_SPLITS, PaperResults, is_paper_split, load_paper_results
from lmm.tracking.runs import (
    DEFAULT_PATTERNS,
    UNTAGGED,
    NoRunsError,
    Runs,
    collect_runs,
    discover_stores,
    headline_scores,
    store_uri,
    summarize,
)

TWIN_MARK = " †"
DASH = "–"
KEYS = ["experiment", "twin", "benchmark"]
WHY = {"model_twin": "tiny twin model", "synthetic_data": "synthetic twins of the benchmarks"}
TWINS = {"pretrained": "pretrained twins", "random": "random twins",  # the training run's `twins` tag
         "pretrained-vision": "pretrained vision twin, random LLM twin",
         "pretrained-llm": "random vision twin, pretrained LLM twin"}


def twin_warning(rows: dict[str, set[str]]) -> str:
    """The report's warning above the tables: what † means, and why each marked row is not comparable."""
    listed = "; ".join(f"`{label}`: {', '.join(sorted(why))}" for label, why in rows.items() if why)
    return ("> **Not comparable to the paper (rows marked †).** Their numbers come from twins: tiny-scale twins of "
            "the backbones (`model.twin=True`: random twins, or twins pretrained on the synthetic world under "
            "`twins=pretrained`, as each row says; trained on synthetic data) or the synthetic twins of the "
            "benchmarks (the evaluation's `benchmark_data` tag). They show that the pipeline runs end to "
            "end; the paper's come from the real 7B/13B models on the real benchmarks."
            + (f" Rows: {listed}." if listed else ""))


def _why(group: pd.DataFrame) -> str:
    """Why a group of scores comes from twins: the tiny twin model (with its ``twins`` kind when the runs say it)
    and / or the synthetic benchmarks."""
    reasons = []
    for column, text in WHY.items():
        if not group[column].any():
            continue
        if column == "model_twin":
            kinds = sorted({TWINS.get(k, k) for k in group.loc[group[column].astype(bool), "twins"].dropna()})
            text += f" ({' / '.join(kinds)})" if kinds else ""
        reasons.append(text)
    return ", ".join(reasons)


# ---------------------------------------------------------------------------------------------------- tables
def _row_order(experiments: list[str], paper: PaperResults) -> list[str]:
    """The paper file's experiments in its order, then ours it does not know (by name), untagged runs last."""
    known = paper.order()
    extra = sorted(e for e in set(experiments) - set(known) if e != UNTAGGED)
    return known + extra + ([UNTAGGED] if UNTAGGED in experiments else [])


def _caveats(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, twin, benchmark) of ours: the splits that are not the paper's (``other_split``, e.g.
    ``val``) and why the scores come from twins (``why``)."""
    rows = []
    for key, group in scores.groupby(KEYS, dropna=False):
        other = sorted({s for s, b in zip(group["split"], group["benchmark"]) if not is_paper_split(b, s)})
        rows.append({**dict(zip(KEYS, key)), "other_split": " / ".join(other), "why": _why(group)})
    return pd.DataFrame(rows, columns=[*KEYS, "other_split", "why"])


def comparison_table(runs: Runs | None, paper: PaperResults, latest: bool = False) -> pd.DataFrame:
    """Long table, one row per (experiment row, benchmark): ours (mean, std, n) beside the paper's value, and
    whether they are ``comparable``: a real model, the real benchmark files, the paper's split.

    A row is an experiment and twin flag (:func:`~lmm.tracking.runs.headline_scores`: a tiny twin model or the
    synthetic twins of the benchmarks): every experiment of the paper file (paper-only when we have no run), and
    every (experiment, twin) of our evaluation runs outside sweeps (sweeps have their own tables). ``other_split``
    names the splits of ours that are not the paper's (VQAv2 / VizWiz val), ``why`` the twins a † row comes from."""
    ours = pd.DataFrame(columns=[*KEYS, "mean", "std", "n", "other_split", "why"])
    if runs is not None:
        scores = headline_scores(runs, latest=latest)
        scores = scores[scores["sweep"].isna()]
        ours = summarize(scores, KEYS).merge(_caveats(scores), on=KEYS, how="left")
    groups = {(e, bool(t)) for e, t in zip(ours["experiment"], ours["twin"])}
    rows = []
    for order, exp in enumerate(_row_order(sorted({e for e, _ in groups}), paper)):
        twins = sorted(t for e, t in groups if e == exp) or [False]
        entry = paper.experiments.get(exp)
        for twin in twins:
            for bench in BENCHMARKS:
                rows.append({
                    "experiment": exp, "twin": twin, "order": order, "bench_order": BENCHMARKS.index(bench),
                    "row_label": exp + (TWIN_MARK if twin else ""),
                    "section": entry.section if entry else "other", "source": entry.source if entry else "",
                    "label": entry.label if entry else "", "benchmark": bench,
                    "paper": np.nan if entry is None or entry.scores.get(bench) is None
                    else entry.scores[bench],
                    "paper_derived": bool(entry and bench in entry.derived),
                    "paper_seen": bool(entry and bench in entry.seen_in_training),
                })
    table = pd.DataFrame(rows)
    ours = ours.assign(twin=ours["twin"].astype(bool))
    table = table.merge(ours, on=KEYS, how="left")
    table["n"] = table["n"].fillna(0).astype(int)
    table[["other_split", "why"]] = table[["other_split", "why"]].fillna("")
    table["comparable"] = ~table["twin"] & (table["n"] > 0) & (table["other_split"] == "")
    return table.sort_values(["order", "twin", "bench_order"]).reset_index(drop=True)


def _num(v: float) -> str:
    return f"{v:.1f}"


def format_cell(row) -> str:
    """``ours / paper``; ours as mean ± std (n) over several runs, followed by its split in brackets when that is
    not the paper's (``76.0 (val)``); ``*`` = the paper's model saw the benchmark's training images, ``‡`` =
    derived from the paper's numbers (see the report's notes)."""
    if row["n"] == 0 and pd.isna(row["paper"]):
        return ""
    ours = DASH if row["n"] == 0 else _num(row["mean"])
    if row["n"] > 1:
        ours += f" ± {_num(row['std'])} (n={row['n']})"
    if row.get("other_split"):
        ours += f" ({row['other_split']})"
    paper = DASH if pd.isna(row["paper"]) else _num(row["paper"])
    paper += ("*" if row["paper_seen"] else "") + ("‡" if row["paper_derived"] else "")
    return f"{ours} / {paper}"


def cells_frame(table: pd.DataFrame, paper: PaperResults, section: str | None = None) -> pd.DataFrame:
    """The wide view: a line per experiment row, an ``ours / paper`` column per benchmark with any value."""
    t = table if section is None else table[table["section"] == section]
    if t.empty:
        return pd.DataFrame()
    t = t.assign(cell=t.apply(format_cell, axis=1))
    wide = t.pivot_table(index=["order", "twin", "row_label"], columns="benchmark", values="cell",
                         aggfunc="first")
    benches = [b for b in BENCHMARKS if b in wide.columns and (wide[b] != "").any()]
    wide = wide[benches].rename(columns=paper.label)
    return wide.reset_index(level=["order", "twin"], drop=True).rename_axis(index="experiment", columns=None)


def data_efficiency_table(runs: Runs) -> pd.DataFrame:
    """Fig. 4: per (experiment, twin, ratio, benchmark) the mean score and its % of the ratio-1.0 score."""
    s = headline_scores(runs)
    s = s[s["sweep"] == "data_efficiency"].copy()
    s["ratio"] = pd.to_numeric(s["sweep_value"], errors="coerce")
    s = summarize(s[s["ratio"].notna()], ["experiment", "twin", "ratio", "benchmark"])
    if s.empty:
        return s.assign(relative=pd.Series(dtype=float))
    full = s[np.isclose(s["ratio"], 1.0)].set_index(["experiment", "twin", "benchmark"])["mean"]
    ref = s.set_index(["experiment", "twin", "benchmark"]).index.map(full.to_dict())
    ref = pd.Series(ref, index=s.index, dtype=float).replace(0, np.nan)
    return s.assign(relative=100 * s["mean"] / ref).sort_values(["experiment", "twin", "ratio"])


def llm_choice_table(runs: Runs, paper: PaperResults) -> pd.DataFrame:
    """Fig. 3: per (experiment, twin, LLM, benchmark) the mean score and its % of the best LLM's score."""
    s = headline_scores(runs)
    s = summarize(s[s["sweep"] == "llm_choice"], ["experiment", "twin", "sweep_value", "benchmark"])
    if s.empty:
        return s.assign(variant=pd.Series(dtype=str), relative=pd.Series(dtype=float))
    names = paper.llm_choice.get("variants") or {}
    best = s.groupby(["experiment", "twin", "benchmark"])["mean"].transform("max").replace(0, np.nan)
    return s.assign(variant=s["sweep_value"].map(lambda v: names.get(v, v)), relative=100 * s["mean"] / best)


# ---------------------------------------------------------------------------------------------------- report
def _md_table(frame: pd.DataFrame, index_name: str) -> str:
    if frame.empty:
        return ""
    cols = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx), *("" if pd.isna(v) else str(v) for v in row)]) + " |")
    return "\n".join(lines)


def _sweep_frame(df: pd.DataFrame, key: str, paper: PaperResults) -> pd.DataFrame:
    cell = df.apply(lambda r: f"{_num(r['mean'])} ({_num(r['relative'])}%)" if pd.notna(r["relative"])
                    else _num(r["mean"]), axis=1)
    wide = df.assign(cell=cell).pivot_table(index=key, columns="benchmark", values="cell", aggfunc="first")
    wide = wide[[b for b in BENCHMARKS if b in wide.columns]].rename(columns=paper.label)
    return wide.rename_axis(columns=None)


def _text(v) -> str:
    return v if isinstance(v, str) else ""


def _group_title(exp: str, twin: bool) -> str:
    return f"`{exp}`" + (TWIN_MARK + " (twins)" if twin else "")


def _claims(spec: dict) -> list[str]:
    out = [f"Paper ({spec.get('figure', '')}): the text gives no data points, only these statements:", ""]
    out += [f"- {c}" for c in spec.get("claims") or []]
    if spec.get("normalisation"):
        out.append(f"- The figure plots the {spec['normalisation']}.")
    return out


def split_notes(runs: Runs | None, labels: dict[str, str]) -> list[str]:
    """A warning for every benchmark whose numbers of ours come from another split than the paper's."""
    if runs is None or runs.eval_runs.empty:
        return []
    notes = []
    for bench, theirs in PAPER_SPLITS.items():
        ours = sorted({s[bench] for s in runs.eval_runs["splits"] if isinstance(s, dict) and bench in s})
        other = [x for x in ours if not is_paper_split(bench, x)]
        if other:
            notes.append(f"**{labels.get(bench, bench)}**: ours on **{' / '.join(other)}**, the paper's on "
                         f"**{theirs[0]}**")
    return ["> **Not the paper's split.** " + "; ".join(notes) + ". Those cells compare different question sets "
            "(tag `split.<bench>` on each MLflow run).", ""] if notes else []


def render_report(table: pd.DataFrame, de: pd.DataFrame, lc: pd.DataFrame, runs: Runs | None,
                  paper: PaperResults, out_dir: Path, latest: bool = False) -> tuple[str, list[Path]]:
    """The markdown report and the charts it links (written into ``out_dir``)."""
    labels = {b: paper.label(b) for b in BENCHMARKS}
    chart_paths: list[Path] = []
    n_runs, n_eval, n_stores = (0, 0, 0) if runs is None else (
        len(runs.runs), len(runs.eval_runs), len(runs.stores))
    marked = table[table["twin"] & (table["n"] > 0)]
    twin_rows = {label: {w for cell in group["why"] for w in cell.split(", ") if w}
                 for label, group in marked.groupby("row_label", sort=False)}
    twin_sweeps = bool(len(de) and de["twin"].any()) or bool(len(lc) and lc["twin"].any())
    md = ["# LLaVA-1.5 reproduction: ours vs the paper", "",
          f"Generated {datetime.now():%Y-%m-%d %H:%M} from {n_runs} MLflow runs ({n_eval} evaluation "
          f"run{'' if n_eval == 1 else 's'}) in {n_stores} store(s).", ""]
    if twin_rows or twin_sweeps:
        md += [twin_warning(twin_rows), ""]
    if runs is not None and runs.problems:
        md += ["> **Stores that could not be read:** " + "; ".join(f"`{p}`" for p in runs.problems), ""]
    agg = ("the newest evaluation run" if latest
           else "mean ± sample std over n evaluation runs (seeds / repeats)")
    md += [f"Each cell is **ours / paper**. Ours: {agg}; {DASH} = not evaluated / not reported. `*` the "
           "paper's model saw that benchmark's training images; `‡` derived from the paper's own numbers "
           "(POPE: mean of the three split F1s). Units are the benchmarks' official headline scores "
           "(%, MME = perception score out of 2000).", ""]
    md += split_notes(runs, labels)
    cites = "; ".join(f"**{k}** — {v.get('citation', '')}" for k, v in paper.sources.items())
    md += [f"Sources: {cites}.", ""]
    for key in [*paper.sections, "other"]:
        frame = cells_frame(table, paper, key)
        if frame.empty:
            continue
        md += [f"## {paper.sections.get(key, 'Other runs (no paper number)')}", ""]
        info = table[table["section"] == key].drop_duplicates(["experiment", "twin"])
        frame.insert(0, "what it is", list(info["label"]))
        frame.insert(1, "paper source", list(info["source"]))
        md += [_md_table(frame, "experiment"), ""]
        notes = [f"- `{e.name}`: {e.note}" for e in paper.experiments.values() if e.section == key and e.note]
        md += [*notes, ""] if notes else []

    md += ["## Data efficiency (Fig. 4)", ""]
    if de.empty:
        md += ["No `data_efficiency` sweep runs found. Run one with "
               "`python train.py -m +sweep=data_efficiency +experiment=llava_v1_5_7b`.", ""]
    for (exp, twin), rows in de.groupby(["experiment", "twin"], sort=False):
        md += [f"Sweep over `data.finetune.subsample` for {_group_title(exp, twin)}: each cell is the score "
               "(its % of the ratio-1.0 score).", "",
               _md_table(_sweep_frame(rows, "ratio", paper), "ratio"), ""]
        if not np.isclose(rows["ratio"], 1.0).any():
            md += ["No ratio-1.0 run in this sweep: relative values cannot be computed.", ""]
        path = out_dir / f"data_efficiency_{exp}{'_twin' if twin else ''}.png"
        chart_paths.append(charts.data_efficiency_chart(rows, labels, f"Data efficiency — {exp}"
                                                       + (TWIN_MARK + " (twins)" if twin else ""), path))
        md += [f"![data efficiency]({path.name})", ""]
    md += [*_claims(paper.data_efficiency), ""]

    if not lc.empty:
        md += ["## LLM choice (Fig. 3)", ""]
        for (exp, twin), rows in lc.groupby(["experiment", "twin"], sort=False):
            md += [f"LLM sweep for {_group_title(exp, twin)}: each cell is the score (its % of the best "
                   "LLM on that benchmark).", "", _md_table(_sweep_frame(rows, "variant", paper), "LLM"), ""]
            path = out_dir / f"llm_choice_{exp}{'_twin' if twin else ''}.png"
            chart_paths.append(charts.llm_choice_chart(rows, labels, f"LLM choice — {exp}"
                                                        + (TWIN_MARK + " (twins)" if twin else ""), path))
            md += [f"![LLM choice]({path.name})", ""]
        md += [*_claims(paper.llm_choice), ""]

    bars = charts.bar_charts(table, labels, out_dir)
    if bars:
        md += ["## Ours vs the paper, per benchmark", ""] + [f"![{p.stem}]({p.name})" for p in bars] + [""]
    chart_paths += bars
    if runs is not None and n_eval:
        ev = runs.eval_runs.sort_values("start_time")
        md += ["## Evaluation runs", "",
               "| run | experiment | twin model | benchmarks | sweep | value | started | store |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| `{r.run_id[:12]}` | {r.experiment} | {'yes' if r.twin else 'no'} | "
               f"{'synthetic' if r.synthetic_data else 'real'} | {_text(r.sweep)} | "
               f"{_text(r.sweep_value)} | {r.start_time:%Y-%m-%d %H:%M} | {r.tracking_uri} |"
               for r in ev.itertuples()] + [""]
    return "\n".join(md), chart_paths


def write_report(runs: Runs | None, paper: PaperResults | None = None,
                 out_dir: str | Path = "outputs/compare", latest: bool = False) -> dict:
    """Build every table, write ``report.md`` and the PNGs into ``out_dir``; returns the tables and paths."""
    paper = paper or load_paper_results()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(runs, paper, latest=latest)
    de = data_efficiency_table(runs) if runs is not None else pd.DataFrame()
    lc = llm_choice_table(runs, paper) if runs is not None else pd.DataFrame()
    text, chart_paths = render_report(table, de, lc, runs, paper, out_dir, latest)
    report = out_dir / "report.md"
    report.write_text(text)
    return {"report": report, "charts": chart_paths, "table": table, "data_efficiency": de, "llm_choice": lc}


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmm.tracking.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="where to look for stores (default: .)")
    ap.add_argument("--pattern", action="append",
                    help=f"glob under --root (default: {', '.join(DEFAULT_PATTERNS)})")
    ap.add_argument("--tracking-uri", action="append",
                    help="an MLflow tracking URI or mlflow.db path (repeatable; replaces the globbing; default: "
                         "$MLFLOW_TRACKING_URI when set and neither --root nor --pattern is given)")
    ap.add_argument("--experiment-name", default="lmm")
    ap.add_argument("--paper", default=None, help="paper numbers (default: experiments/paper_results.yaml)")
    ap.add_argument("--out", default="outputs/compare", help="output folder (default: outputs/compare)")
    ap.add_argument("--latest", action="store_true", help="use only the newest evaluation per experiment")
    args = ap.parse_args(argv)
    env = os.environ.get("MLFLOW_TRACKING_URI")  # the store every run logs to when it is set (a server, …)
    if env and not (args.tracking_uri or args.pattern or args.root):
        args.tracking_uri = [env]
    args.root = args.root or "."
    stores = [store_uri(u) for u in args.tracking_uri] if args.tracking_uri else \
        discover_stores(args.root, args.pattern or DEFAULT_PATTERNS)
    try:
        paper = load_paper_results(args.paper)
        runs = collect_runs(stores, args.experiment_name)
    except (NoRunsError, FileNotFoundError, ValueError) as e:
        where = ", ".join(args.tracking_uri or [f"{Path(args.root).resolve()}/{p}"
                                                for p in args.pattern or DEFAULT_PATTERNS])
        print(f"compare: {e}\n  searched: {where}\n"
              "  train first (python train.py ...) or pass --tracking-uri.", file=sys.stderr)
        return 2
    for problem in runs.problems:
        print(f"compare: warning: store not read: {problem}", file=sys.stderr)
    out = write_report(runs, paper, args.out, latest=args.latest)
    t = out["table"]
    with_scores = t[t["n"] > 0].drop_duplicates(["experiment", "twin"])
    print(f"compare: {len(runs.runs)} runs ({len(runs.eval_runs)} evaluations) from {len(stores)} store(s); "
          f"{len(with_scores)} experiment rows with scores ({int(with_scores['twin'].sum())} from twins: not "
          "comparable)")
    print(f"report: {out['report']}")
    for p in out["charts"]:
        print(f"chart: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
