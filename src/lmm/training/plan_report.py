"""The printed pre-flight plan (:func:`lmm.training.plan.run_plan`): one table, a column per stage, then per stage the
candidate strategies with their memory and expected time, and the fastest that fits with the overrides to use it."""

from __future__ import annotations

from lmm.training.plan_search import CKPT_KEY


def _n(x: float) -> str:
    return f"{x / 1e9:.3f} B" if x >= 1e9 else f"{x / 1e6:.1f} M" if x >= 1e5 else f"{int(x):,}"


def _batch(s: dict) -> str:
    if "accumulation" in s:
        return f"{s['global_batch']} = {s['micro_batch']}×{s['world']}×{s['accumulation']}"
    return f"{s['global_batch']} / ({s['micro_batch']}×{s['world']}): does not divide"


def format_table(plan: dict) -> str:
    """The plan's table, one column per stage."""
    st, g = plan["stages"], plan["gpu_spec"]
    rows: list[tuple[str, list[str]]] = []

    def row(label, fn):
        rows.append((label, [fn(s) for s in st.values()]))

    def section(label):
        rows.append((label, ["" for _ in st]))

    parts = [p for p in ("vision", "connector", "llm", "lora", "hd") if any(p in s["params"] for s in st.values())]
    section("parameters (trainable / frozen)")
    for p in parts:
        row(f"  {p}", lambda s, p=p: "-" if p not in s["params"] else
            f"{_n(s['params'][p]['trainable'])} / {_n(s['params'][p]['frozen'])}")
    row("  total", lambda s: f"{_n(s['trainable'])} / {_n(s['frozen'])}")
    section("tokens per sample")
    row("  image (views)", lambda s: f"{s['tokens']['image']} ({s['tokens']['views']} view"
        f"{'s' if s['tokens']['views'] > 1 else ''}), {100 * s['tokens']['image_share']:.0f}% of samples")
    row("  text mean / peak", lambda s: f"{s['tokens']['text_mean']:.0f} / {s['tokens']['text_peak']}")
    row("  labels mean / peak", lambda s: f"{s['tokens']['labels_mean']:.0f} / {s['tokens']['labels_peak']:.0f}")
    row("  LLM seq mean / peak", lambda s: f"{s['tokens']['seq_mean']:.0f} / {s['tokens']['seq_peak']} "
        f"(cap {s['tokens']['max_length']})")
    row("  from", lambda s: s["tokens"]["origin"].split(";")[0])
    section("steps")
    row("  samples", lambda s: f"{s['samples']:,}")
    row("  global = micro×GPUs×acc", _batch)
    row("  epochs → steps", lambda s: f"{s['epochs']} → {s['steps']:,}")
    section(f"memory per GPU (GiB of {g.memory_gib:.0f})")
    row("  strategy", lambda s: f"{s['strategy']}, ckpt {'on' if s['checkpointing'] else 'off'}")
    for key, label in (("weights", "weights"), ("grads", "gradients"), ("optimizer", "optimizer (AdamW)")):
        row(f"  {label}", lambda s, k=key: f"{s['memory_gib'][k]:.1f}")
    row("  LLM activations ckpt/none", lambda s: f"{s['memory_gib']['activations_ckpt']:.1f} / "
        f"{s['memory_gib']['activations_no_ckpt']:.1f}")
    row("  activations (as run)", lambda s: f"{s['memory_gib']['activations']:.1f}")
    row("  logits (labels, fp32 loss)", lambda s: f"{s['memory_gib']['logits']:.1f}")
    row("  overhead", lambda s: f"{s['memory_gib']['overhead']:.1f}")
    row("  total", lambda s: f"{s['memory_gib']['total']:.1f} " + ("fits" if s["fits"] else "DOES NOT FIT"))
    section(f"time ({plan['world']} × {g.peak_tflops:.0f} TFLOP/s)")
    row("  PFLOP / step (model)", lambda s: f"{s['flops_per_step'] / 1e15:.2f} ({s['model_flops_per_step'] / 1e15:.2f})")
    row("  EFLOP total", lambda s: f"{s['flops_total'] / 1e18:.1f}")
    row("  preflight.hfu.<stage>", lambda s: f"{s['hfu']:.2f}")
    row("  communication / step", lambda s: f"{s['comm_s']:.2f} s")
    row("  hours", lambda s: f"{s['hours']:.1f}")
    row("  implied MFU / HFU", lambda s: f"{s['implied']['mfu']:.2f} / {s['implied']['hfu']:.2f}")
    width = max(len(r[0]) for r in rows) + 2
    cols = [max([len(n)] + [len(r[1][k]) for r in rows]) + 2 for k, n in enumerate(st)]
    head = f"pre-flight plan: {plan['world']} × {plan['gpu']} ({g.peak_tflops:.0f} TFLOP/s bf16, {g.memory_gib:.0f} GiB)"
    lines = [head, " " * width + "".join(n.ljust(c) for n, c in zip(st, cols))]
    lines += [label.ljust(width) + "".join(v.ljust(c) for v, c in zip(vals, cols)) for label, vals in rows]
    origins = {s["tokens"]["origin"] for s in st.values() if ";" in s["tokens"]["origin"]}
    lines += [f"note: {o.split(';', 1)[1].strip()}" for o in sorted(origins)]
    return "\n".join(line.rstrip() for line in lines)


def format_options(name: str, s: dict) -> str:
    """The candidate strategies of stage ``name`` and the fastest that fits."""
    if not s["options"]:
        return ""
    lines = [f"strategies for {name} (global batch {s['global_batch']} kept; time at preflight.hfu.{name} = "
             f"{s['hfu']:.2f}):",
             f"  {'strategy':<18}{'ckpt':<6}{'micro×acc':<11}{'GiB':>7}{'hours':>8}"]
    best = s["fastest"]
    for o in s["options"]:
        mark = " ".join(m for m, on in (("configured", o["configured"]), ("fastest", o is best)) if on)
        mb = f"{o['micro']}×{o['accumulation']}"
        time = f"{o['hours']:8.1f}" if o["fits"] else ("    -   " if o["hours"] is None else f"{o['hours']:8.1f}")
        status = "" if o["fits"] else "  does not fit" + (" at micro 1" if o["micro"] == 1 else "")
        lines.append(f"  {o['strategy']:<18}{'on' if o['checkpointing'] else 'off':<6}{mb:<11}"
                     f"{o['memory_gib']:7.1f}{time}  {mark}{status}".rstrip())
    if best is None:
        lines.append("fastest that fits: none — see the refusal below")
    elif not best["overrides"]:
        lines.append(f"fastest that fits: as configured ({best['hours']:.1f} h)")
    else:
        lines.append(f"fastest that fits: {best['strategy']}, ckpt {'on' if best['checkpointing'] else 'off'}, micro "
                     f"batch {best['micro']}: {best['hours']:.1f} h (configured {s['hours']:.1f} h): "
                     f"{' '.join(best['overrides'])}")
    return "\n".join(lines)


def format_run(plan: dict) -> str:
    """With several stages: the overrides of every stage's fastest setting together, or why they cannot be."""
    st = plan["stages"]
    if len(st) < 2 or not any(s.get("fastest") and s["fastest"]["overrides"] for s in st.values()):
        return ""
    together = plan.get("fastest_run")
    if together is None:
        return (f"note: {CKPT_KEY} is model-wide and the stages' fastest settings disagree on it: plan and run each "
                f"stage on its own (run_stages=[<stage>]) with its line above")
    hours = sum(s["fastest"]["hours"] for s in st.values() if s.get("fastest"))
    return (f"fastest that fits, whole run: {hours:.1f} h (configured {sum(s['hours'] for s in st.values()):.1f} h): "
            f"{' '.join(together)}")


def format_plan(plan: dict) -> str:
    """The table, then each stage's strategies, then the whole run's fastest overrides."""
    parts = [format_table(plan)] + [format_options(n, s) for n, s in plan["stages"].items()] + [format_run(plan)]
    return "\n".join(p for p in parts if p)


__all__ = ["format_options", "format_plan", "format_table"]
