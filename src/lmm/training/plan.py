"""The pre-flight plan (``python train.py ... plan=true``): what each stage of a run will cost, before any weight is
loaded — parameters per part, tokens per sample, steps, memory per GPU under the stage's strategy, FLOPs and time —
and a refusal, naming Hydra overrides that fit, when a stage cannot fit the GPU.

The real-size model is built from the configs' ``arch`` blocks on the meta device
(:func:`lmm.models.build.build_llava_meta`) and the stage rules are applied to it (:func:`apply_stage`, LoRA
included), so the parameter counts are the model's own. Formulas and their sources: :mod:`lmm.training.plan_costs`;
samples and tokens: :mod:`lmm.training.plan_data`. Assumptions (``preflight.*`` in ``conf/train.yaml``): the GPU
model (peak bf16 TFLOP/s, memory), the world size when ``trainer.devices`` is not an int, and the utilisation that
turns FLOPs into hours. ``preflight.mfu`` is applied to the *executed* FLOPs (activation recompute included); the
PaLM-style MFU (model FLOPs only) is returned beside it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lmm.models.build import build_llava_meta
from lmm.training import plan_costs as costs
from lmm.training.plan_costs import GIB, GPU, ModelShape, Sharding, gpu_spec
from lmm.training.plan_data import stage_data, stage_steps
from lmm.training.stages import apply_stage


class PlanError(ValueError):
    """A stage cannot run as configured (it does not fit the GPU, or its batch sizes do not divide)."""


def world_size(cfg: DictConfig) -> int:
    """``trainer.devices × trainer.num_nodes`` when devices is an int (a list: its length), else ``preflight.gpus``."""
    devices, nodes = cfg.trainer.get("devices"), int(cfg.trainer.get("num_nodes") or 1)
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices * nodes
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices) * nodes
    return int(cfg.get("preflight", {}).get("gpus") or 1)


def sharding_of(strategy: Any) -> tuple[Sharding, str]:
    """The :class:`Sharding` and a label of a ``stages.<s>.strategy`` node (conf/strategy)."""
    s = OmegaConf.to_container(strategy, resolve=True) if OmegaConf.is_config(strategy) else dict(strategy or {})
    name = s.get("name", "auto")
    if name in ("auto", "ddp"):
        return Sharding("replicate"), name
    if name == "fsdp":
        reshard = bool(s.get("reshard_after_forward", True))
        return Sharding("fsdp", reshard=reshard), "fsdp" + ("" if reshard else " (no reshard)")
    if name == "deepspeed":
        z = (s.get("config") or {}).get("zero_optimization") or {}
        stage = int(z.get("stage", 0))
        off_o = ((z.get("offload_optimizer") or {}).get("device") or "none") != "none"
        off_p = ((z.get("offload_param") or {}).get("device") or "none") != "none"
        label = f"deepspeed ZeRO-{stage}" + (" + offload" if off_o or off_p else "")
        return Sharding("zero", zero_stage=stage, offload_optimizer=off_o, offload_params=off_p), label
    raise ValueError(f"unknown strategy name {name!r}; known: auto, ddp, fsdp, deepspeed")


def checkpointing_of(cfg: DictConfig, strategy: Any) -> bool:
    """Activation checkpointing: the LLM's ``gradient_checkpointing``, or FSDP's ``activation_checkpointing``."""
    fsdp_ckpt = strategy.get("name") == "fsdp" and bool(strategy.get("activation_checkpointing", False))
    return bool(cfg.model.llm.get("gradient_checkpointing", False)) or fsdp_ckpt


def param_rows(model) -> dict[str, dict[str, int]]:
    """``{part: {trainable, frozen}}`` for vision / connector / llm (base) / lora (adapters) / hd."""
    from lmm.models.lora import adapter_parameters, is_lora

    adapters = {id(p) for p in adapter_parameters(model)} if is_lora(model) else set()
    rows: dict[str, dict[str, int]] = {}
    for part in ("vision", "connector", "llm", "hd"):
        module = getattr(model, part, None)
        if module is None:
            continue
        for p in module.parameters():
            key = "lora" if id(p) in adapters else part
            row = rows.setdefault(key, {"trainable": 0, "frozen": 0})
            row["trainable" if p.requires_grad else "frozen"] += p.numel()
    return rows


def memory_gib(shape: ModelShape, sh: Sharding, world: int, micro: int, seq: int, ckpt: bool, counts: dict,
               lora_r: int, overhead: float, images: bool) -> dict[str, float]:
    """Per-GPU memory in GiB: model states, activations (both with and without checkpointing), logits, total."""
    states = costs.states_bytes(sh, world, counts["trainable"], counts["frozen"], counts["frozen_bytes"],
                                shape.unit_params)
    act = costs.activation_bytes(shape, micro, seq, checkpointing=ckpt, lora_r=lora_r,
                                 image_share=1.0 if images else 0.0)
    out = {k: v / GIB for k, v in states.items()}
    out.update(activations=(act["llm"] + act["vision"] + act["connector"]) / GIB,
               activations_ckpt=act["llm_ckpt"] / GIB, activations_no_ckpt=act["llm_no_ckpt"] / GIB,
               logits=act["logits"] / GIB, overhead=overhead)
    out["total"] = sum(out[k] for k in ("weights", "grads", "optimizer", "activations", "logits", "overhead"))
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


def suggest(name: str, sh: Sharding, ckpt: bool, micro: int, per_gpu_batch: int, fits, mem) -> tuple | None:
    """The first configuration that fits, trying in order: activation checkpointing on, the next sharding levels,
    then halving the micro batch (the global batch kept by accumulation). Returns ``(overrides, GiB)`` or None."""
    overrides: list[str] = []
    if not ckpt:
        overrides.append(f"stages.{name}.strategy.activation_checkpointing=true" if sh.kind == "fsdp"
                         else "model.llm.gradient_checkpointing=true")
        if fits(mem(sh, True, micro)):
            return overrides, mem(sh, True, micro)["total"]
    level = sh
    for level, override in _ladder(sh, name):
        if fits(mem(level, True, micro)):
            return overrides + [override], mem(level, True, micro)["total"]
    if level is not sh:
        overrides.append(_ladder(sh, name)[-1][1])
    m = micro // 2
    while m >= 1 and per_gpu_batch % m == 0:
        if fits(mem(level, True, m)):
            return overrides + [f"stages.{name}.micro_batch_size={m}"], mem(level, True, m)["total"]
        m //= 2
    return None


def plan_stage(cfg: DictConfig, name: str, gpu: GPU, world: int) -> dict[str, Any]:
    """The plan of one stage (see the module docstring); ``fits`` false comes with ``error`` (the refusal)."""
    stage, pre = cfg.stages[name], cfg.get("preflight") or {}
    model = build_llava_meta(cfg.model.vision, cfg.model.connector, cfg.model.llm, cfg.model.max_length,
                             cfg.model.get("hd"), twin=bool(cfg.model.get("twin")))
    model.hd_active = model.hd is not None and bool(stage.get("hd", True))
    shape = costs.model_shape(model, model.hd_active)
    lora = OmegaConf.to_container(stage.lora, resolve=True) if stage.get("lora") else None
    with torch.device("meta"):  # LoRA adapters are created on meta too (no memory, no init cost)
        apply_stage(model, list(stage.trainable), lora)
    params = param_rows(model)
    counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
              "frozen_bytes": float(sum(p.numel() * p.element_size() for p in model.parameters()
                                        if not p.requires_grad))}
    lora_params, lora_r = params.get("lora", {}).get("trainable", 0), int((lora or {}).get("r", 0))
    data = stage_data(cfg, name, shape.image_tokens)
    G, micro = int(stage.global_batch_size), int(stage.micro_batch_size)
    steps = stage_steps(data.samples, G, int(stage.epochs), int(stage.get("max_steps") or -1))
    sh, label = sharding_of(stage.get("strategy") or {"name": "auto"})
    ckpt = checkpointing_of(cfg, stage.get("strategy") or {})
    overhead = float(pre.get("overhead_gib", 1.5))
    images = data.image_share > 0

    def mem(level, on, m):
        return memory_gib(shape, level, world, m, data.seq_peak, on, counts, lora_r, overhead, images)

    def fits(m):
        return m["total"] <= gpu.memory_gib

    memory = mem(sh, ckpt, micro)
    trains = set(stage.trainable)
    flops = costs.sample_flops(shape, data.seq_mean, data.seq_sq_mean, data.image_share,
                               llm_trains="llm" in trains and not lora, connector_trains="connector" in trains,
                               lora_params=lora_params, checkpointing=ckpt)
    mfu = float(pre.get("mfu", 0.35))
    step_executed, step_model = G * flops.executed, G * flops.model
    seconds = steps * step_executed / (mfu * gpu.peak_tflops * 1e12 * world)
    out = {
        "params": params, "trainable": counts["trainable"], "frozen": counts["frozen"],
        "tokens": {"image": shape.image_tokens, "views": shape.views_per_image, "text_mean": data.text_mean,
                   "text_peak": data.text_peak, "seq_mean": data.seq_mean, "seq_peak": data.seq_peak,
                   "image_share": data.image_share, "origin": data.origin, "max_length": int(cfg.model.max_length)},
        "samples": data.samples, "per_source": data.per_source, "global_batch": G, "micro_batch": micro,
        "world": world, "epochs": int(stage.epochs), "steps": steps, "strategy": label, "checkpointing": ckpt,
        "memory_gib": memory, "fits": fits(memory), "flops_per_step": step_executed,
        "model_flops_per_step": step_model, "flops_total": steps * step_executed,
        "model_flops_total": steps * step_model, "hours": seconds / 3600, "mfu": mfu, "shape": shape,
    }
    per_gpu = G // world if G % world == 0 else 0
    if per_gpu == 0 or per_gpu % micro:
        out["fits"] = False
        out["error"] = (f"stage {name}: global batch {G} is not a multiple of {world} GPU(s): change the world size "
                        f"or stages.{name}.global_batch_size" if per_gpu == 0 else
                        f"stage {name}: the per-GPU batch {per_gpu} (global {G} / {world} GPUs) is not a multiple "
                        f"of micro batch {micro}: choose stages.{name}.micro_batch_size dividing {per_gpu}")
        return out
    out["accumulation"] = per_gpu // micro
    if not out["fits"]:
        m = memory
        where = (f"≈ {m['total']:.1f} GiB per GPU > {gpu.memory_gib:.0f} GiB ({gpu.name}) with {label}, micro batch "
                 f"{micro}, activation checkpointing {'on' if ckpt else 'off'} (weights {m['weights']:.1f}, grads "
                 f"{m['grads']:.1f}, optimizer {m['optimizer']:.1f}, activations {m['activations']:.1f}, logits "
                 f"{m['logits']:.1f} GiB)")
        fix = suggest(name, sh, ckpt, micro, per_gpu, fits, mem)
        if fix:
            out["suggestion"] = fix[0]
            out["error"] = (f"stage {name} does not fit: {where}. A configuration that fits (≈ {fix[1]:.1f} GiB): "
                            f"{' '.join(fix[0])}")
        else:
            out["error"] = (f"stage {name} does not fit: {where}, nor fully sharded with micro batch 1. Use more GPUs "
                            f"(trainer.num_nodes / preflight.gpus), a bigger GPU (preflight.gpu=h200) or LoRA "
                            f"(stages.{name}.lora)")
    return out


def make_plan(cfg: DictConfig) -> dict[str, Any]:
    """The plan of every stage in ``cfg.run_stages``, as data; nothing is raised for a stage that does not fit."""
    pre = cfg.get("preflight") or {}
    gpu_key = str(pre.get("gpu", "a100_80g"))
    gpu, world = gpu_spec(gpu_key), world_size(cfg)
    return {"gpu": gpu_key, "gpu_spec": gpu, "world": world, "mfu": float(pre.get("mfu", 0.35)),
            "stages": {name: plan_stage(cfg, name, gpu, world) for name in cfg.run_stages}}


def implied_utilisation(stage: dict, hours: float, gpu: GPU, world: int) -> dict[str, float]:
    """The utilisation a measured wall-clock implies: ``mfu`` (model FLOPs, PaLM) and ``hfu`` (executed FLOPs)."""
    avail = hours * 3600 * gpu.peak_tflops * 1e12 * world
    return {"mfu": stage["model_flops_total"] / avail, "hfu": stage["flops_total"] / avail}


def _n(x: float) -> str:
    return f"{x / 1e9:.3f} B" if x >= 1e9 else f"{x / 1e6:.1f} M" if x >= 1e5 else f"{int(x):,}"


def format_plan(plan: dict) -> str:
    """A table, one column per stage."""
    st = plan["stages"]
    g = plan["gpu_spec"]
    rows: list[tuple[str, list[str]]] = []

    def row(label, fn):
        rows.append((label, [fn(s) for s in st.values()]))

    parts = [p for p in ("vision", "connector", "llm", "lora", "hd") if any(p in s["params"] for s in st.values())]
    rows.append(("parameters (trainable / frozen)", ["" for _ in st]))
    for p in parts:
        row(f"  {p}", lambda s, p=p: "-" if p not in s["params"] else
            f"{_n(s['params'][p]['trainable'])} / {_n(s['params'][p]['frozen'])}")
    row("  total", lambda s: f"{_n(s['trainable'])} / {_n(s['frozen'])}")
    rows.append(("tokens per sample", ["" for _ in st]))
    row("  image (views)", lambda s: f"{s['tokens']['image']} ({s['tokens']['views']} view"
        f"{'s' if s['tokens']['views'] > 1 else ''}), {100 * s['tokens']['image_share']:.0f}% of samples")
    row("  text mean / peak", lambda s: f"{s['tokens']['text_mean']:.0f} / {s['tokens']['text_peak']}")
    row("  LLM seq mean / peak", lambda s: f"{s['tokens']['seq_mean']:.0f} / {s['tokens']['seq_peak']} "
        f"(cap {s['tokens']['max_length']})")
    row("  from", lambda s: s["tokens"]["origin"].split(";")[0])
    rows.append(("steps", ["" for _ in st]))
    row("  samples", lambda s: f"{s['samples']:,}")
    row("  global = micro×GPUs×acc", lambda s: f"{s['global_batch']} = {s['micro_batch']}×{s['world']}×"
        f"{s.get('accumulation', '?')}")
    row("  epochs → steps", lambda s: f"{s['epochs']} → {s['steps']:,}")
    rows.append((f"memory per GPU (GiB of {g.memory_gib:.0f})", ["" for _ in st]))
    row("  strategy", lambda s: f"{s['strategy']}, ckpt {'on' if s['checkpointing'] else 'off'}")
    for key, label in (("weights", "weights"), ("grads", "gradients"), ("optimizer", "optimizer (AdamW)")):
        row(f"  {label}", lambda s, k=key: f"{s['memory_gib'][k]:.1f}")
    row("  LLM activations ckpt/none", lambda s: f"{s['memory_gib']['activations_ckpt']:.1f} / "
        f"{s['memory_gib']['activations_no_ckpt']:.1f}")
    row("  activations (as run)", lambda s: f"{s['memory_gib']['activations']:.1f}")
    row("  logits (fp32 loss)", lambda s: f"{s['memory_gib']['logits']:.1f}")
    row("  overhead", lambda s: f"{s['memory_gib']['overhead']:.1f}")
    row("  total", lambda s: f"{s['memory_gib']['total']:.1f} " + ("fits" if s["fits"] else "DOES NOT FIT"))
    rows.append((f"compute ({plan['world']} × {g.peak_tflops:.0f} TFLOP/s)", ["" for _ in st]))
    row("  PFLOP / step (model)", lambda s: f"{s['flops_per_step'] / 1e15:.2f} ({s['model_flops_per_step'] / 1e15:.2f})")
    row("  EFLOP total", lambda s: f"{s['flops_total'] / 1e18:.1f}")
    row(f"  hours at MFU {plan['mfu']:.2f}", lambda s: f"{s['hours']:.1f}")
    width = max(len(r[0]) for r in rows) + 2
    cols = [max([len(n)] + [len(r[1][k]) for r in rows]) + 2 for k, n in enumerate(st)]
    head = f"pre-flight plan: {plan['world']} × {plan['gpu']} ({g.peak_tflops:.0f} TFLOP/s bf16, {g.memory_gib:.0f} GiB)"
    lines = [head, " " * width + "".join(n.ljust(c) for n, c in zip(st, cols))]
    lines += [label.ljust(width) + "".join(v.ljust(c) for v, c in zip(vals, cols)) for label, vals in rows]
    origins = {s["tokens"]["origin"] for s in st.values() if ";" in s["tokens"]["origin"]}
    lines += [f"note: {o.split(';', 1)[1].strip()}" for o in sorted(origins)]
    return "\n".join(line.rstrip() for line in lines)


def run_plan(cfg: DictConfig) -> dict[str, Any]:
    """Print the plan of every stage and return it; raise :class:`PlanError` (naming a configuration that fits) when
    a stage cannot run as configured."""
    plan = make_plan(cfg)
    print(format_plan(plan))
    errors = [s["error"] for s in plan["stages"].values() if not s["fits"]]
    if errors:
        raise PlanError("\n".join(errors))
    return plan


__all__ = ["PlanError", "format_plan", "implied_utilisation", "make_plan", "run_plan", "world_size"]
