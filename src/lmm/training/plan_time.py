"""Time of a stage for the pre-flight plan (:mod:`lmm.training.plan`): matmuls at a per-stage utilisation, the
memory-bound ops at the HBM bandwidth, the small micro batch's loss of efficiency, and the communication a strategy
adds. Rough by design — the utilisation is calibrated on LLaVA's own wall-clock (``docs/preflight.md``), the rest is
first-order physics:

* **Compute**: executed FLOPs per step (activation recompute included: :func:`lmm.training.plan_costs.sample_flops`)
  ÷ (``W`` × peak × ``hfu`` × ``e(M)``). ``hfu`` (``preflight.hfu.<stage>``) is the share of the peak the stage's
  matmuls reach on large micro batches, calibrated so that LLaVA's own settings reproduce its reported times.
* **Memory-bound ops**: their bytes per step (:func:`lmm.training.plan_costs.sample_traffic`, recompute included)
  ÷ (``W`` × HBM bandwidth). They are why a model does not speed up with the GPU's peak alone (an H100 has 3.2× an
  A100's FLOP/s but 1.6× its bandwidth), and why a narrower model reaches a lower end-to-end utilisation.
* **Micro-batch efficiency** ``e(M) = M / (M + peak / HBM bandwidth)`` for ``M`` = tokens per micro batch: each
  matmul reads its bf16 weights once per pass (``2·n·k`` bytes) and computes ``2·M·n·k`` FLOPs, so at ``M`` below
  the GPU's ridge (A100 80GB: 312 / 2.04 ≈ 153 tokens) it waits on memory. At LLaVA's micro batches (≥ 10K tokens)
  ``e ≈ 0.99``; it is what makes a micro batch of 1 slower per sample than one of 16.
* **Optimizer**: AdamW reads a trainable parameter, its gradient and two moments and writes three of them back, fp32:
  28 bytes per parameter per step at the HBM bandwidth, on the GPU's shard (``P_t / W`` under ZeRO / FSDP, all of
  ``P_t`` under DDP).
* **Communication**, not overlapped (an upper bound; DeepSpeed's ``overlap_comm`` hides part of it): each collective
  moves ``(W − 1)/W`` of its full size per GPU at the link's bandwidth — NVLink within a node
  (:class:`lmm.training.plan_costs.GPU` ``link_gbps``), ``preflight.internode_gbps`` (InfiniBand per GPU) once
  ``W`` exceeds ``preflight.gpus_per_node``. Per optimizer step with ``n`` micro batches, ``P_t`` / ``P_f`` trainable /
  frozen parameters:

  - DDP: one all-reduce (2 × the size) of the fp32 gradients, ``4·P_t`` (no sync while accumulating);
  - ZeRO-1/2: a reduce-scatter of the bf16 gradients (``2·P_t``) at every micro batch, an all-gather of the updated
    bf16 weights once per step;
  - ZeRO-3: at every micro batch, two all-gathers of every bf16 weight, ``2·(P_t + P_f)`` (forward; backward with
    its recompute, kept alive by ``stage3_max_reuse_distance``) and the gradients' reduce-scatter ``2·P_t``;
  - FSDP: two all-gathers of the bf16 weights (one without ``reshard_after_forward``) and a reduce-scatter of the
    fp32 gradients (``4·P_t``) at every micro batch.
"""

from __future__ import annotations

from typing import Any

from lmm.training.plan_costs import GPU, PlanError, Sharding

GPUS_PER_NODE = 8
INTERNODE_GBPS = 25.0   # one 200 Gb/s InfiniBand HCA per GPU (DGX A100)


def micro_efficiency(tokens: float, gpu: GPU) -> float:
    """``e(M)`` of the module docstring: the share of the matmul peak a micro batch of ``tokens`` tokens reaches."""
    ridge = gpu.peak_tflops / gpu.hbm_tbps
    return tokens / (tokens + ridge) if tokens > 0 else 0.0


def comm_bytes(sh: Sharding, trainable: float, frozen: float, micro_batches: int) -> float:
    """Bytes of the collectives of one optimizer step, each at its full (unsharded) size; an all-reduce counts twice."""
    n, Pt, Pf = int(micro_batches), float(trainable), float(frozen)
    if sh.kind == "replicate":
        return 2 * 4 * Pt
    if sh.kind == "zero":
        if sh.zero_stage >= 3:
            return n * (2 * 2 * (Pt + Pf) + 2 * Pt)
        if sh.zero_stage >= 1:
            return n * 2 * Pt + 2 * Pt
        return n * 2 * 2 * Pt   # plain DeepSpeed data parallel: an all-reduce at every micro batch
    if sh.kind == "fsdp":
        return n * ((2 if sh.reshard else 1) * 2 * (Pt + Pf) + 4 * Pt)
    raise ValueError(f"unknown sharding kind {sh.kind!r}")


def optimizer_seconds(sh: Sharding, world: int, trainable: float, gpu: GPU) -> float:
    """The AdamW update's memory traffic per step (module docstring); CPU offload moves it off the GPU (not timed)."""
    if sh.kind == "zero" and sh.offload_optimizer:
        return 0.0
    shard = trainable if sh.kind == "replicate" or (sh.kind == "zero" and sh.zero_stage == 0) else trainable / world
    return 28.0 * shard / (gpu.hbm_tbps * 1e12)


def link_gbps(world: int, gpu: GPU, gpus_per_node: int = GPUS_PER_NODE,
              internode_gbps: float = INTERNODE_GBPS) -> float:
    """The bandwidth a collective over ``world`` GPUs runs at: the slowest link of its ring."""
    return gpu.link_gbps if world <= gpus_per_node else min(gpu.link_gbps, internode_gbps)


def comm_seconds(sh: Sharding, world: int, trainable: float, frozen: float, micro_batches: int, gpu: GPU,
                 gpus_per_node: int = GPUS_PER_NODE, internode_gbps: float = INTERNODE_GBPS) -> float:
    """Seconds of communication per optimizer step (module docstring); 0 on one GPU."""
    if world <= 1:
        return 0.0
    moved = comm_bytes(sh, trainable, frozen, micro_batches) * (world - 1) / world
    return moved / (link_gbps(world, gpu, gpus_per_node, internode_gbps) * 1e9)


def stage_hfu(pre: Any, stage: str) -> float:
    """``preflight.hfu.<stage>`` (else ``.default``), or ``preflight.hfu`` when it is one number for every stage."""
    hfu = (pre or {}).get("hfu", 0.4)
    if hasattr(hfu, "get"):
        if hfu.get(stage) is None and hfu.get("default") is None:
            raise PlanError(f"preflight.hfu.{stage}: no utilisation for stage {stage!r} and no preflight.hfu.default: "
                            f"set +preflight.hfu.{stage}=<0..1> (docs/preflight.md)")
        hfu = hfu.get(stage) if hfu.get(stage) is not None else hfu.get("default")
    value = float(hfu)
    if not 0.0 < value <= 1.0:
        raise PlanError(f"preflight.hfu (stage {stage}) is {value}: a utilisation is a share of the peak — set "
                        f"preflight.hfu.{stage} in (0, 1]")
    return value


def step_seconds(executed_flops: float, traffic_bytes: float, tokens_per_micro: float, world: int, gpu: GPU,
                 hfu: float, fixed_s: float) -> float:
    """One optimizer step: its executed FLOPs at ``hfu × e(M)`` of the peak of ``world`` GPUs, its memory-bound bytes
    at their HBM bandwidth, plus ``fixed_s`` (communication and the optimizer's update)."""
    rate = world * gpu.peak_tflops * 1e12 * hfu * micro_efficiency(tokens_per_micro, gpu)
    return executed_flops / rate + traffic_bytes / (world * gpu.hbm_tbps * 1e12) + fixed_s


__all__ = ["comm_bytes", "comm_seconds", "link_gbps", "micro_efficiency", "optimizer_seconds", "stage_hfu",
           "step_seconds"]
