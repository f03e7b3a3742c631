"""PNG charts of a comparison (matplotlib, Agg backend): ours vs the paper per benchmark; Figs. 4 and 3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

OURS, PAPER = "#1f77b4", "#bbbbbb"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def bar_charts(table: pd.DataFrame, labels: dict[str, str], out_dir: Path) -> list[Path]:
    """One grouped-bar PNG per benchmark with at least one score of ours: ours (± std) beside the paper's
    value, per experiment row. ``table`` is :func:`lmm.tracking.compare.comparison_table`'s output."""
    plt = _plt()
    paths = []
    for bench, rows in table.groupby("benchmark", sort=False):
        rows = rows[rows["mean"].notna()]
        if rows.empty:
            continue
        x = np.arange(len(rows))
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.6))
        ax.bar(x - 0.2, rows["mean"], 0.4, yerr=rows["std"].fillna(0), color=OURS, label="ours", capsize=3)
        ax.bar(x + 0.2, rows["paper"].fillna(0), 0.4, color=PAPER, label="paper")
        for xi, p in zip(x, rows["paper"]):
            if pd.isna(p):
                ax.text(xi + 0.2, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#666666")
        ax.set_xticks(x, [r.row_label for r in rows.itertuples()], rotation=30, ha="right", fontsize=8)
        twin_note = "\n† twins (model or benchmarks): not comparable to the paper" if rows["twin"].any() else ""
        ax.set_title(labels.get(bench, bench) + twin_note, fontsize=10)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"bars_{bench}.png"))
    return paths


def data_efficiency_chart(de: pd.DataFrame, labels: dict[str, str], title: str, path: Path) -> Path:
    """Fig. 4 style: each benchmark's score at each subsample ratio, in % of the full mixture's (1.0)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for bench, rows in de.groupby("benchmark", sort=False):
        rows = rows.sort_values("ratio")
        ax.plot(rows["ratio"], rows["relative"], marker="o", label=labels.get(bench, bench))
    ax.axhline(100, color="#888888", lw=0.8, ls="--")
    ax.set_xlabel("share of the instruction-tuning mixture")
    ax.set_ylabel("% of the full-mixture score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def llm_choice_chart(lc: pd.DataFrame, labels: dict[str, str], title: str, path: Path) -> Path:
    """Fig. 3 style: per benchmark, each LLM's score relative to the best LLM on that benchmark, %."""
    plt = _plt()
    benches = list(dict.fromkeys(lc["benchmark"]))
    variants = list(dict.fromkeys(lc["variant"]))
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(benches) + 2), 3.8))
    for i, variant in enumerate(variants):
        rel = lc[lc["variant"] == variant].set_index("benchmark")["relative"].reindex(benches)
        offset = (i - (len(variants) - 1) / 2) * width
        ax.bar(np.arange(len(benches)) + offset, rel.fillna(0), width, label=variant)
    ax.set_xticks(np.arange(len(benches)), [labels.get(b, b) for b in benches], rotation=30, ha="right")
    ax.set_ylabel("% of the best LLM")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


VERDICT_COLOURS = {"reproduced": "#2ca02c", "contradicted": "#d62728", "unresolved": "#ff7f0e",
                   "no claim": "#7f7f7f", "calibration": "#000000"}


def delta_chart(panels: dict[str, list[tuple[str, float, float, float, str]]], path: Path, title: str) -> Path:
    """Table 2 in miniature: one panel per benchmark, each transition's Δ with its 95 % interval (points), a 0
    line, coloured by verdict (reproduced / contradicted / unresolved / no claim; the calibration in black).
    ``panels``: benchmark label → (transition label, Δ, low, high, verdict), NaN where there is no data."""
    plt = _plt()
    cols = min(3, max(len(panels), 1))
    rows = -(-len(panels) // cols) or 1
    width = max((len(points) for points in panels.values()), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * max(3.5, 0.45 * width + 1.5), rows * 3.2), squeeze=False)
    for ax, (bench, points) in zip(axes.ravel(), panels.items()):
        ax.axhline(0, color="#888888", lw=0.8)
        for x, (_, delta, low, high, verdict) in enumerate(points):
            if np.isnan(delta):
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6, color="#666666")
                continue
            colour = VERDICT_COLOURS.get(verdict, "#7f7f7f")
            ax.errorbar([x], [delta], yerr=[[delta - low], [high - delta]], fmt="o", color=colour, ms=4, capsize=2)
        ax.set_xticks(np.arange(len(points)), [p[0] for p in points], rotation=60, ha="right", fontsize=6)
        ax.set_title(bench, fontsize=9)
        ax.set_ylabel("Δ (points)", fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=len(handles))
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    return _save(fig, path)
