"""The strategy search of the pre-flight plan (:mod:`lmm.training.plan`): every candidate configuration of a stage —
DDP, DeepSpeed ZeRO-2, ZeRO-3, FSDP, each with activation checkpointing on and off, at the largest micro batch that
fits and keeps the global batch (accumulation makes up the rest) — with its memory and expected time; the fastest
that fits, with the Hydra overrides that select it; and the least change that makes a refused stage fit.

The evaluator ``ev`` passed in answers ``ev.memory(sharding, checkpointing, micro)`` (GiB per GPU, ``total`` key) and
``ev.timing(sharding, checkpointing, micro)`` (``hours``, ``comm_s``) for the stage (:class:`lmm.training.plan.Stage`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lmm.training.plan_costs import Sharding

# (conf/strategy group option, sharding, label as the plan prints a configured strategy)
CANDIDATES = (
    ("ddp", Sharding("replicate"), "ddp"),
    ("deepspeed_zero2", Sharding("zero", zero_stage=2), "deepspeed ZeRO-2"),
    ("deepspeed_zero3", Sharding("zero", zero_stage=3), "deepspeed ZeRO-3"),
    ("fsdp", Sharding("fsdp", reshard=True), "fsdp"),
)
CKPT_KEY = "model.llm.gradient_checkpointing"   # model-wide: every stage of the run


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, largest first (the micro batches that keep a per-GPU batch of ``n``)."""
    return [d for d in range(n, 0, -1) if n % d == 0]


def strategy_key(strategy: dict) -> str | None:
    """The conf/strategy option a configured ``stages.<s>.strategy`` node equals (``auto`` counts as ``ddp``), or None
    for another variant (CPU offload, FSDP without resharding, ...)."""
    name = strategy.get("name", "auto")
    if name in ("auto", "ddp"):
        return "ddp"
    if name == "fsdp":
        return "fsdp" if strategy.get("reshard_after_forward", True) else None
    z = ((strategy.get("config") or {}).get("zero_optimization") or {})
    offload = any(((z.get(k) or {}).get("device") or "none") != "none" for k in ("offload_optimizer", "offload_param"))
    stage = int(z.get("stage", 0))
    return f"deepspeed_zero{stage}" if stage in (2, 3) and not offload else None


def overrides(name: str, key: str, ckpt: bool, micro: int, current: dict[str, Any]) -> list[str]:
    """The overrides that turn the configured stage (``current``: ``key``, ``model_ckpt``, ``fsdp_ckpt``, ``micro``)
    into candidate ``key`` with checkpointing ``ckpt`` at micro batch ``micro``."""
    out = [] if key == current["key"] else [f"strategy@stages.{name}.strategy={key}"]
    if key == "fsdp":  # on when the model's flag or FSDP's own activation_checkpointing (conf/strategy/fsdp.yaml: true)
        fsdp_ckpt = current["fsdp_ckpt"] if current["key"] == "fsdp" else True
        if ckpt and not current["model_ckpt"] and not fsdp_ckpt:
            out.append(f"stages.{name}.strategy.activation_checkpointing=true")
        if not ckpt:
            out += [f"{CKPT_KEY}=false"] if current["model_ckpt"] else []
            out += [f"stages.{name}.strategy.activation_checkpointing=false"] if fsdp_ckpt else []
    elif ckpt != current["model_ckpt"]:
        out.append(f"{CKPT_KEY}={str(ckpt).lower()}")
    if micro != current["micro"]:
        out.append(f"stages.{name}.micro_batch_size={micro}")
    return out


def options(ev, name: str, per_gpu: int, current: dict[str, Any], configured: tuple[Sharding, bool]) -> list[dict]:
    """Every candidate at the largest micro batch (a divisor of ``per_gpu``) that fits, with its time; a candidate
    that fits at no micro batch is listed with its memory at micro batch 1. The configured setting is marked (added as
    its own row when it is none of the candidates at their largest micro batch)."""
    rows = []
    for key, sh, label in CANDIDATES:
        for ckpt in (True, False):
            micro, mem = 1, None
            for m in divisors(per_gpu):
                mem = ev.memory(sh, ckpt, m)
                if ev.fits(mem):
                    micro = m
                    break
            fits = mem is not None and ev.fits(mem)
            row = {"strategy": label, "key": key, "checkpointing": ckpt, "micro": micro,
                   "accumulation": per_gpu // micro, "memory_gib": mem["total"] if mem else float("nan"),
                   "fits": fits, "overrides": overrides(name, key, ckpt, micro, current), "configured": False}
            row.update(ev.timing(sh, ckpt, micro) if fits else {"hours": None, "comm_s": None})
            rows.append(row)
    sh, ckpt = configured
    mine = next((r for r in rows if r["key"] == current["key"] and r["checkpointing"] == ckpt
                 and r["micro"] == current["micro"] and r["fits"]), None)
    if mine is None and per_gpu % current["micro"] == 0:
        mem = ev.memory(sh, ckpt, current["micro"])
        mine = {"strategy": current["label"], "key": current["key"], "checkpointing": ckpt, "micro": current["micro"],
                "accumulation": per_gpu // current["micro"], "memory_gib": mem["total"], "fits": ev.fits(mem),
                "overrides": [], **ev.timing(sh, ckpt, current["micro"])}
        rows.append(mine)
    if mine is not None:
        mine["configured"] = True
    return rows


def fastest(rows: list[dict], tie: float = 0.01) -> dict | None:
    """The fitting row of least time; among those within ``tie`` (1 %) of it — closer than the model can tell — the
    configured one, else the one of fewest overrides."""
    fit = [r for r in rows if r["fits"]]
    if not fit:
        return None
    best = min(r["hours"] for r in fit)
    near = [r for r in fit if r["hours"] <= best * (1 + tie)]
    return min(near, key=lambda r: (not r["configured"], len(r["overrides"]), r["hours"]))


def run_overrides(stages: dict[str, dict]) -> list[str] | None:
    """The overrides of every stage's fastest setting together, or None when they disagree on a model-wide key
    (``model.llm.gradient_checkpointing``: one stage's fastest turns it off, another's keeps it)."""
    picks = [s["fastest"]["overrides"] if s.get("fastest") else [] for s in stages.values()]
    wide = [[o for o in p if o.startswith(CKPT_KEY + "=")] for p in picks]
    if any(w != wide[0] for w in wide):
        return None
    out: list[str] = []
    for p in picks:
        out += [o for o in p if o not in out]
    return out


def _ladder(sh: Sharding, name: str) -> list[tuple[Sharding, str]]:
    """The next sharding levels of a strategy, with the Hydra override that selects each."""
    group = f"strategy@stages.{name}.strategy"
    zero = [(Sharding("zero", zero_stage=2), f"{group}=deepspeed_zero2"),
            (Sharding("zero", zero_stage=3), f"{group}=deepspeed_zero3")]
    if sh.kind == "replicate":
        return zero
    if sh.kind == "zero":
        return [z for z in zero if z[0].zero_stage > sh.zero_stage]
    return [] if sh.reshard else [(replace(sh, reshard=True), f"stages.{name}.strategy.reshard_after_forward=true")]


def suggest(ev, name: str, sh: Sharding, ckpt: bool, micro: int, per_gpu: int) -> tuple | None:
    """The least change that fits, trying in order: activation checkpointing on, the next sharding levels, then
    halving the micro batch (the global batch kept by accumulation). Returns ``(overrides, GiB)`` or None."""
    out: list[str] = []
    if not ckpt:
        out.append(f"stages.{name}.strategy.activation_checkpointing=true" if sh.kind == "fsdp"
                   else f"{CKPT_KEY}=true")
        if ev.fits(ev.memory(sh, True, micro)):
            return out, ev.memory(sh, True, micro)["total"]
    level = sh
    for level, override in _ladder(sh, name):
        if ev.fits(ev.memory(level, True, micro)):
            return out + [override], ev.memory(level, True, micro)["total"]
    if level is not sh:
        out.append(_ladder(sh, name)[-1][1])
    m = micro // 2
    while m >= 1 and per_gpu % m == 0:
        if ev.fits(ev.memory(level, True, m)):
            return out + [f"stages.{name}.micro_batch_size={m}"], ev.memory(level, True, m)["total"]
        m //= 2
    return None


__all__ = ["CANDIDATES", "divisors", "fastest", "options", "overrides", "run_overrides", "strategy_key", "suggest"]
