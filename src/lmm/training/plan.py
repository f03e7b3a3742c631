"""The pre-flight plan (``python train.py ... plan=true``): what each stage of a run will cost, before any weight is
loaded — parameters per part, tokens per sample, steps, memory per GPU under the stage's strategy, FLOPs and time —
every candidate strategy with its memory and time and the fastest that fits, and a refusal, naming Hydra overrides
that fit, when a stage cannot fit the GPU or its batch does not divide.

The real-size model is built from the configs' ``arch`` blocks on the meta device
(:func:`lmm.models.build.build_llava_meta`) and the stage rules are applied to it (:func:`apply_stage`, LoRA
included), so the parameter counts are the model's own. Formulas and their sources: :mod:`lmm.training.plan_costs`;
samples and tokens: :mod:`lmm.training.plan_data`; time: :mod:`lmm.training.plan_time`; the strategy search:
:mod:`lmm.training.plan_search`; the printed table: :mod:`lmm.training.plan_report`. Assumptions (``preflight.*`` in
``conf/train.yaml``): the GPU model (peak bf16 TFLOP/s, memory and bandwidths), the world size when
``trainer.devices`` is not an int, and the matmul utilisation per stage (``preflight.hfu.<stage>``: the share of the
bf16 peak at which the *executed* FLOPs run, activation recompute included) calibrated on LLaVA's reported times; the
end-to-end MFU (model FLOPs, PaLM) and HFU the time implies are returned beside it.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lmm.models.build import build_llava_meta
from lmm.training import plan_costs as costs
from lmm.training.plan_costs import GIB, GPU, ModelShape, PlanError, Sharding, gpu_spec
from lmm.training.plan_data import stage_data, stage_steps
from lmm.training.plan_report import format_plan
from lmm.training.plan_search import divisors, fastest, options, run_overrides, strategy_key, suggest
from lmm.training.plan_time import (
    GPUS_PER_NODE,
    INTERNODE_GBPS,
    comm_seconds,
    optimizer_seconds,
    stage_hfu,
    step_seconds,
)
from lmm.training.stages import apply_stage


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
    raise PlanError(f"stages.<stage>.strategy.name: unknown strategy {name!r}; known: auto, ddp, fsdp, deepspeed "
                    f"(conf/strategy)")


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
               lora_r: int, overhead: float, images: bool, label_tokens: float | None = None) -> dict[str, float]:
    """Per-GPU memory in GiB: model states, activations (both with and without checkpointing), logits (at
    ``label_tokens`` positions per sample: training's label-only LM head; None: every position), total."""
    states = costs.states_bytes(sh, world, counts["trainable"], counts["frozen"], counts["frozen_bytes"],
                                shape.unit_params)
    act = costs.activation_bytes(shape, micro, seq, checkpointing=ckpt, lora_r=lora_r,
                                 image_share=1.0 if images else 0.0, label_tokens=label_tokens)
    out = {k: v / GIB for k, v in states.items()}
    out.update(activations=(act["llm"] + act["vision"] + act["connector"]) / GIB,
               activations_ckpt=act["llm_ckpt"] / GIB, activations_no_ckpt=act["llm_no_ckpt"] / GIB,
               logits=act["logits"] / GIB, overhead=overhead)
    out["total"] = sum(out[k] for k in ("weights", "grads", "optimizer", "activations", "logits", "overhead"))
    return out


class Stage:
    """One stage's model, data and assumptions: :meth:`memory` and :meth:`timing` of any sharding, checkpointing and
    micro batch (what :mod:`lmm.training.plan_search` compares)."""

    def __init__(self, cfg: DictConfig, name: str, gpu: GPU, world: int):
        stage, pre = cfg.stages[name], cfg.get("preflight") or {}
        model = build_llava_meta(cfg.model.vision, cfg.model.connector, cfg.model.llm, cfg.model.max_length,
                                 cfg.model.get("hd"), twin=bool(cfg.model.get("twin")))
        model.hd_active = model.hd is not None and bool(stage.get("hd", True))
        self.shape = costs.model_shape(model, model.hd_active)
        lora = OmegaConf.to_container(stage.lora, resolve=True) if stage.get("lora") else None
        with torch.device("meta"):  # LoRA adapters are created on meta too (no memory, no init cost)
            apply_stage(model, list(stage.trainable), lora)
        self.params = param_rows(model)
        self.counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                       "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
                       "frozen_bytes": float(sum(p.numel() * p.element_size() for p in model.parameters()
                                                 if not p.requires_grad))}
        self.lora_params, self.lora_r = self.params.get("lora", {}).get("trainable", 0), int((lora or {}).get("r", 0))
        self.llm_trains = "llm" in stage.trainable and not lora
        self.connector_trains = "connector" in stage.trainable
        self.data = stage_data(cfg, name, self.shape.image_tokens)
        self.gpu, self.world, self.global_batch = gpu, world, int(stage.global_batch_size)
        self.steps = stage_steps(self.data.samples, self.global_batch, int(stage.epochs),
                                 int(stage.get("max_steps") or -1))
        self.overhead, self.hfu = float(pre.get("overhead_gib", 1.5)), stage_hfu(pre, name)
        self.links = {"gpus_per_node": int(pre.get("gpus_per_node") or GPUS_PER_NODE),
                      "internode_gbps": float(pre.get("internode_gbps") or INTERNODE_GBPS)}

    def fits(self, mem: dict) -> bool:
        return mem["total"] <= self.gpu.memory_gib

    def memory(self, sh: Sharding, ckpt: bool, micro: int) -> dict[str, float]:
        """GiB per GPU at the stage's peak length (logits at its peak label count: the label-only LM head)."""
        return memory_gib(self.shape, sh, self.world, micro, self.data.seq_peak, ckpt, self.counts, self.lora_r,
                          self.overhead, self.data.image_share > 0, self.data.labels_peak)

    def flops(self, ckpt: bool) -> costs.Flops:
        """FLOPs per sample on the training path (the LM head at the labelled positions)."""
        return costs.sample_flops(self.shape, self.data.seq_mean, self.data.seq_sq_mean, self.data.image_share,
                                  llm_trains=self.llm_trains, connector_trains=self.connector_trains,
                                  lora_params=self.lora_params, checkpointing=ckpt, head_tokens=self.data.labels_mean)

    def timing(self, sh: Sharding, ckpt: bool, micro: int) -> dict[str, float]:
        """``hours`` of the stage and ``comm_s`` per optimizer step (:mod:`lmm.training.plan_time`)."""
        per_gpu = max(1, self.global_batch // self.world)
        comm = comm_seconds(sh, self.world, self.counts["trainable"], self.counts["frozen"], max(1, per_gpu // micro),
                            self.gpu, **self.links)
        fixed = comm + optimizer_seconds(sh, self.world, self.counts["trainable"], self.gpu)
        traffic = costs.sample_traffic(self.shape, self.data.seq_mean, self.data.image_share, checkpointing=ckpt)
        step = step_seconds(self.global_batch * self.flops(ckpt).executed, self.global_batch * traffic,
                            micro * self.data.seq_mean, self.world, self.gpu, self.hfu, fixed)
        return {"hours": self.steps * step / 3600, "comm_s": comm}


def _divisibility(name: str, G: int, W: int, micro: int, st: Stage, sh: Sharding, ckpt: bool) -> tuple[str, list]:
    """The message and the overrides for a global batch that does not divide into ``W`` GPUs × micro batches."""
    if G % W == 0:
        per_gpu = G // W
        smaller = [d for d in divisors(per_gpu) if d <= micro]
        m = next((d for d in smaller if st.fits(st.memory(sh, ckpt, d))), smaller[0])
        fix = [f"stages.{name}.micro_batch_size={m}"]
        how = f"set {fix[0]} ({per_gpu} per GPU, accumulation {per_gpu // m}; the global batch is kept)"
    else:
        near = min({max(1, G // W) * W, (G // W + 1) * W}, key=lambda b: (abs(b - G), -b))
        m = max(d for d in divisors(near // W) if d <= micro)
        fix = [f"stages.{name}.global_batch_size={near}", f"stages.{name}.micro_batch_size={m}"]
        how = (f"use a world size that divides {G} (trainer.devices × trainer.num_nodes, or preflight.gpus), or "
               f"change the recipe's global batch (its learning rate was tuned for {G}): {' '.join(fix)}")
    return f"stage {name}: the global batch ({G}) does not divide by {W} GPUs × micro batch {micro}: {how}", fix


def _too_big(name: str, st: Stage, out: dict, sh: Sharding, ckpt: bool, per_gpu: int) -> None:
    """The refusal of a stage that does not fit: the least change that fits, and the fastest configuration that does."""
    m, micro, gpu = out["memory_gib"], out["micro_batch"], st.gpu
    where = (f"≈ {m['total']:.1f} GiB per GPU > {gpu.memory_gib:.0f} GiB ({gpu.name}) with {out['strategy']}, micro "
             f"batch {micro}, activation checkpointing {'on' if ckpt else 'off'} (weights {m['weights']:.1f}, grads "
             f"{m['grads']:.1f}, optimizer {m['optimizer']:.1f}, activations {m['activations']:.1f}, logits "
             f"{m['logits']:.1f} GiB)")
    fix, best = suggest(st, name, sh, ckpt, micro, per_gpu), out["fastest"]
    if fix:
        out["suggestion"] = fix[0]
        faster = (f"; the fastest that fits ({best['hours']:.1f} h): {' '.join(best['overrides'])}"
                  if best and best["overrides"] != fix[0] else "")
        out["error"] = (f"stage {name} does not fit: {where}. A configuration that fits (≈ {fix[1]:.1f} GiB): "
                        f"{' '.join(fix[0])}{faster}")
    else:
        out["error"] = (f"stage {name} does not fit: {where}, nor fully sharded with micro batch 1. Use more GPUs "
                        f"(trainer.num_nodes / preflight.gpus), a bigger GPU (preflight.gpu=h200) or LoRA "
                        f"(stages.{name}.lora)")


def plan_stage(cfg: DictConfig, name: str, gpu: GPU, world: int) -> dict[str, Any]:
    """The plan of one stage (see the module docstring); a stage that cannot run comes with ``error`` (the refusal)
    and ``fits`` false when it is the memory."""
    stage = cfg.stages[name]
    st = Stage(cfg, name, gpu, world)
    data, shape, G, micro = st.data, st.shape, st.global_batch, int(stage.micro_batch_size)
    node = stage.get("strategy") or {"name": "auto"}
    sh, label = sharding_of(node)
    ckpt = checkpointing_of(cfg, node)
    memory, flops, timing = st.memory(sh, ckpt, micro), st.flops(ckpt), st.timing(sh, ckpt, micro)
    out = {
        "params": st.params, "trainable": st.counts["trainable"], "frozen": st.counts["frozen"],
        "tokens": {"image": shape.image_tokens, "views": shape.views_per_image, "text_mean": data.text_mean,
                   "text_peak": data.text_peak, "seq_mean": data.seq_mean, "seq_peak": data.seq_peak,
                   "labels_mean": data.labels_mean, "labels_peak": data.labels_peak,
                   "image_share": data.image_share, "origin": data.origin, "max_length": int(cfg.model.max_length)},
        "samples": data.samples, "per_source": data.per_source, "global_batch": G, "micro_batch": micro,
        "world": world, "epochs": int(stage.epochs), "steps": st.steps, "strategy": label, "checkpointing": ckpt,
        "memory_gib": memory, "fits": st.fits(memory), "flops_per_step": G * flops.executed,
        "model_flops_per_step": G * flops.model, "flops_total": st.steps * G * flops.executed,
        "model_flops_total": st.steps * G * flops.model, "hours": timing["hours"], "comm_s": timing["comm_s"],
        "hfu": st.hfu, "shape": shape,
    }
    out["implied"] = implied_utilisation(out, out["hours"], gpu, world)
    plain_node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    current = {"key": strategy_key(plain_node), "label": label, "micro": micro,
               "model_ckpt": bool(cfg.model.llm.get("gradient_checkpointing", False)),
               "fsdp_ckpt": bool(plain_node.get("activation_checkpointing", False))}
    per_gpu = G // world if G % world == 0 else 0
    out["options"] = options(st, name, per_gpu, current, (sh, ckpt)) if per_gpu else []
    out["fastest"] = fastest(out["options"])
    if per_gpu == 0 or per_gpu % micro:
        out["error"], out["suggestion"] = _divisibility(name, G, world, micro, st, sh, ckpt)
    else:
        out["accumulation"] = per_gpu // micro
        if not out["fits"]:
            _too_big(name, st, out, sh, ckpt, per_gpu)
    return out


def make_plan(cfg: DictConfig) -> dict[str, Any]:
    """The plan of every stage in ``cfg.run_stages``, as data; nothing is raised for a stage that cannot run."""
    pre = cfg.get("preflight") or {}
    gpu_key = str(pre.get("gpu", "a100_80g"))
    gpu, world = gpu_spec(gpu_key), world_size(cfg)
    stages = {name: plan_stage(cfg, name, gpu, world) for name in cfg.run_stages}
    return {"gpu": gpu_key, "gpu_spec": gpu, "world": world, "stages": stages, "fastest_run": run_overrides(stages)}


def implied_utilisation(stage: dict, hours: float, gpu: GPU, world: int) -> dict[str, float]:
    """The utilisation a wall-clock implies, end to end (communication included): ``mfu`` (model FLOPs, PaLM's
    definition) and ``hfu`` (executed FLOPs: activation recompute included)."""
    avail = hours * 3600 * gpu.peak_tflops * 1e12 * world
    return {"mfu": stage["model_flops_total"] / avail, "hfu": stage["flops_total"] / avail}


def run_plan(cfg: DictConfig) -> dict[str, Any]:
    """Print the plan of every stage and return it; raise :class:`PlanError` (naming a configuration that runs) when
    a stage cannot run as configured."""
    plan = make_plan(cfg)
    print(format_plan(plan))
    errors = [s["error"] for s in plan["stages"].values() if "error" in s]
    if errors:
        raise PlanError("\n".join(errors))
    return plan


__all__ = ["PlanError", "Stage", "format_plan", "implied_utilisation", "make_plan", "run_plan", "world_size"]
