"""Stage-2 training steps of a real-size LLaVA (random weights) on one GPU: throughput, utilisation, peak memory, and
the fp32-master behaviour on CUDA.

    python benchmarks/gpu_step.py                       # CUDA: CLIP ViT-L/14-336 + mlp2x_gelu + TinyLlama-1.1B
    python benchmarks/gpu_step.py --device cpu --toy    # the same code at toy size (the twins), CPU, seconds
    python benchmarks/gpu_step.py --attn flash_attention_2 --packing   # FlashAttention-2 varlen (pip install -e '.[flash]')
    python benchmarks/gpu_step.py --compile inductor    # the LLM's decoder layers compiled (stages.<stage>.compile)
    python benchmarks/gpu_step.py --deepspeed           # instead: DeepSpeed's accumulation + checkpoint checks
                                                        # (benchmarks/gpu_deepspeed.py; --device cpu --toy on CPU)

The model is built from ``conf/``: ``model/vision/clip_vit_l14_336`` and ``model/llm/tinyllama_1b`` at their
``arch`` shapes (their ``twin`` shapes with ``--toy``), ``model/connector/mlp2x_gelu``; no download. Precision as a
training run: the frozen tower in bf16, the trainable connector + LLM as fp32 masters
(:func:`lmm.training.precision.keep_fp32_masters`), bf16 autocast, TF32 on, AdamW in fp32. Each step is
forward + backward + AdamW on a micro batch of ``--batch`` samples of ``--seq`` LLM tokens, ``576`` of them image
tokens (LLaVA-1.5's 24×24 patches); ``--warmup`` steps, then ``--steps`` timed ones.

Printed: tokens/s, achieved TFLOP/s and MFU, with the model FLOPs of :func:`lmm.training.plan_costs.sample_flops`
(the plan's formula: ``6·N·T`` for the trained LLM + attention ``12·L·h·T²`` + the frozen tower's forward + the
connector; the recompute of ``--ckpt`` is not model FLOPs), peak memory beside the plan's estimate for the same
batch, and the fp32-master check: optimizer state is fp32 (:func:`check_fp32_masters`), and one step at lr 1e-5
moves nearly every element of an fp32 master weight, whereas the same AdamW step on a bf16 copy of it leaves most
elements unchanged (the update is below bf16's resolution) — the reason masters are fp32.

GPU numbers (H100 / H200): still to be recorded — no GPU was available when this script was written; the toy CPU
path is exercised by ``tests/test_gpu_step.py``. At the defaults (8 × 2048, no checkpointing) the plan's formulas
estimate ≈ 58 GiB (27 GiB with ``--ckpt``) and 123 model TFLOP per step (≈ 0.31 s per step at MFU 0.4 on an
H100); record the measured lines here.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name.upper()), None)


def build(device, toy: bool, attn: str | None = None):
    """The LLaVA model (vision bf16 frozen; connector + LLM trainable fp32 masters), built directly on ``device``."""
    import torch
    from omegaconf import OmegaConf

    from lmm.models.build import arch_config, build_llava, random_twin_config
    from lmm.training.precision import keep_fp32_masters
    from lmm.training.stages import apply_stage

    vision = OmegaConf.to_container(OmegaConf.load(CONF / "vision" / "clip_vit_l14_336.yaml"))
    llm = OmegaConf.to_container(OmegaConf.load(CONF / "llm" / "tinyllama_1b.yaml"))
    connector = OmegaConf.to_container(OmegaConf.load(CONF / "connector" / "mlp2x_gelu.yaml"))
    if toy:
        vision, llm = random_twin_config(vision), random_twin_config(llm)
        llm["config"]["vocab_size"] = llm.get("tiny_vocab_size") or 1000
    else:
        vision, llm = arch_config(vision, "vision"), arch_config(llm, "llm")
    llm["gradient_checkpointing"] = False
    llm["attn_implementation"] = attn  # None: transformers' default (SDPA)
    with torch.device(device):
        model = build_llava(vision, connector, llm, max_length=1 << 20)
    model.vision.to(torch.bfloat16)       # as loaded for training (frozen)
    model.llm.to(torch.bfloat16)          # the checkpoint's dtype; trainable parts become fp32 masters below
    apply_stage(model, ["connector", "llm"])
    keep_fp32_masters(model)
    return model


def make_batch(model, batch: int, seq: int, device, seed: int = 0):
    """``batch`` samples of ``seq`` LLM tokens: BOS, the image (its tokens), then random text, all of it labelled."""
    import torch

    from lmm.text.tokenize import IMAGE_TOKEN_INDEX

    n_img = model.num_image_tokens
    n_text = seq - n_img
    if n_text < 2:
        raise SystemExit(f"--seq {seq} must exceed the {n_img} image tokens")
    vocab = model.llm.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, n_text + 1), generator=g)
    ids[:, 0], ids[:, 1] = 1, IMAGE_TOKEN_INDEX
    size = model.vision.image_size
    pixels = torch.randn(batch, 3, size, size, generator=g)
    return ids.to(device), torch.ones_like(ids).to(device), ids.clone().to(device), pixels.to(device)


def plan_memory_gib(model, shape, batch: int, seq: int, ckpt: bool) -> float:
    """The plan's per-GPU estimate for this single-GPU run (replicated states, no overhead)."""
    from lmm.training.plan_costs import GIB, Sharding, activation_bytes, states_bytes

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    states = states_bytes(Sharding("replicate"), 1, trainable, sum(p.numel() for p in frozen),
                          float(sum(p.numel() * p.element_size() for p in frozen)), shape.unit_params)
    act = activation_bytes(shape, batch, seq, checkpointing=ckpt)
    return (sum(states.values()) + act["llm"] + act["vision"] + act["connector"] + act["logits"]) / GIB


def master_check(model, opt, step_fn) -> str:
    """One step at lr 1e-5: the fp32 master must move; the same AdamW step on a bf16 copy mostly does not."""
    import torch

    from lmm.training.precision import check_fp32_masters

    name, p = next((n, p) for n, p in model.llm.named_parameters() if p.requires_grad and p.ndim == 2
                   and "layers.0." in n and "q_proj" in n)
    before = p.detach().clone()
    for group in opt.param_groups:
        group["lr"] = 1e-5
    grad = step_fn(keep_grad_of=p)
    check_fp32_masters(model, opt)
    moved = (p.detach() != before).float().mean().item()
    q = before.to(torch.bfloat16).clone().requires_grad_(True)
    q.grad = grad.to(torch.bfloat16)
    torch.optim.AdamW([q], lr=1e-5, weight_decay=0.0).step()
    moved_bf16 = (q.detach() != before.to(torch.bfloat16)).float().mean().item()
    if p.dtype != torch.float32 or moved < 0.9 or moved_bf16 > moved / 2:
        raise SystemExit(f"fp32 masters: FAILED — {name} ({p.dtype}) moved {moved:.1%} (bf16 copy {moved_bf16:.1%})")
    return (f"fp32 masters: ok — trainable weights and AdamW state fp32; one step at lr 1e-5 moved {moved:.1%} of "
            f"{name} (fp32 master) vs {moved_bf16:.1%} had it been a bf16 weight")


def main(argv=None) -> dict:
    import torch

    from lmm.training.plan_costs import model_shape, sample_flops
    from lmm.training.precision import set_tf32
    from lmm.training.stages import param_groups

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--toy", action="store_true", help="the twins' sizes (CPU-friendly)")
    ap.add_argument("--batch", type=int, default=None, help="micro batch (default 8; toy 2)")
    ap.add_argument("--seq", type=int, default=None, help="LLM tokens per sample incl. image (default 2048; toy 128)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; toy 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; toy 2)")
    ap.add_argument("--ckpt", action="store_true", help="activation checkpointing in the LLM")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by GPU name)")
    ap.add_argument("--logits", choices=("labelled", "all"), default="labelled",
                    help="LM head at labelled positions only (training's path) or everywhere (LLaVA's)")
    ap.add_argument("--packing", action="store_true", help="padding-free packed micro-batch (as training's "
                                                           "packing: auto); run with and without to compare")
    ap.add_argument("--attn", default=None, help="model.llm.attn_implementation: sdpa (default), eager, "
                                                 "flash_attention_2 (pip install -e '.[flash]')")
    ap.add_argument("--compile", default=None, metavar="BACKEND",
                    help="torch.compile the LLM's decoder layers (stages.<stage>.compile), e.g. inductor; the "
                         "warm-up steps compile")
    ap.add_argument("--deepspeed", action="store_true",
                    help="instead of the throughput: DeepSpeed's accumulation and checkpoint checks "
                         "(benchmarks/gpu_deepspeed.py; micro batch 2 of --seq, default 128 toy / 1024)")
    a = ap.parse_args(argv)
    if a.deepspeed:
        return deepspeed_checks(a)
    batch, seq = a.batch or (2 if a.toy else 8), a.seq or (128 if a.toy else 2048)
    warmup, steps = a.warmup if a.warmup is not None else (1 if a.toy else 3), a.steps or (2 if a.toy else 10)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --toy")
    set_tf32(True)
    torch.manual_seed(0)
    model = build(device, a.toy, a.attn)
    if a.ckpt:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.compile:
        from lmm.models.llm import compile_decoder_layers

        compile_decoder_layers(model.llm, backend=a.compile, dynamic=True)
    model.train()
    shape = model_shape(model)
    ids, mask, labels, pixels = make_batch(model, batch, seq, device)
    opt = torch.optim.AdamW(param_groups(model, 2e-5, None), betas=(0.9, 0.999), eps=1e-8)

    def step(keep_grad_of=None):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(ids, mask, labels, pixels, logits=a.logits, packed=a.packing)
        out.loss.backward()
        grad = keep_grad_of.grad.detach().clone() if keep_grad_of is not None else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        return grad

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    flops = batch * sample_flops(shape, seq, seq * seq, 1.0, llm_trains=True, checkpointing=a.ckpt).model
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = a.peak_tflops or (peak_tflops(name) if cuda else None)
    result = {"device": name, "tokens_per_s": batch * seq / dt, "step_s": dt, "tflops": flops / dt / 1e12,
              "mfu": (flops / dt / 1e12 / peak) if peak else None,
              "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None,
              "plan_memory_gib": plan_memory_gib(model, shape, batch, seq, a.ckpt)}
    result["master_check"] = master_check(model, opt, step)
    n = {k: sum(p.numel() for p in getattr(model, k).parameters()) for k in ("vision", "connector", "llm")}
    print(f"device: {name}{' (toy)' if a.toy else ''}; torch {torch.__version__}")
    print(f"model: vision {n['vision']:,} (frozen, bf16) + connector {n['connector']:,} + llm {n['llm']:,} "
          f"(trainable, fp32 masters) parameters; activation checkpointing {'on' if a.ckpt else 'off'}; logits "
          f"{a.logits}; packing {'on' if a.packing else 'off'}; attention {model.llm.config._attn_implementation}"
          + (f"; decoder layers compiled ({a.compile})" if a.compile else ""))
    print(f"batch: {batch} × {seq} tokens ({model.num_image_tokens} image tokens); {warmup} warm-up + {steps} timed "
          f"steps of forward + backward + AdamW")
    print(f"step time: {dt:.4f} s")
    print(f"tokens/s: {result['tokens_per_s']:.1f}")
    print(f"TFLOP/s: {result['tflops']:.2f} (model FLOPs per step {flops:.3e}, lmm.training.plan_costs.sample_flops)")
    print(f"MFU: {result['mfu']:.3f} of {peak:.0f} TFLOP/s" if peak else "MFU: n/a (no peak for this device)")
    mem = f"{result['peak_memory_gib']:.2f} GiB" if cuda else "n/a (CPU)"
    print(f"peak memory: {mem}; plan estimate {result['plan_memory_gib']:.2f} GiB")
    print(result["master_check"])
    return result


def deepspeed_checks(a) -> dict:
    """``--deepspeed``: benchmarks/gpu_deepspeed.py's checks on the model of ``build`` (5 micro-batches of 2)."""
    import tempfile

    import torch
    from gpu_deepspeed import check_deepspeed

    from lmm.data.batch import Batch

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --toy")
    torch.manual_seed(0)
    model = build(torch.device("cpu"), a.toy, a.attn)  # Lightning moves it to the device
    seq = a.seq or (128 if a.toy else 1024)
    batches = [Batch(*make_batch(model, 2, seq, "cpu", seed), ids=[f"s{seed}_{i}" for i in range(2)])
               for seed in range(5)]
    with tempfile.TemporaryDirectory(prefix="lmm-deepspeed-") as root:
        lines = check_deepspeed(model, batches, device, Path(root))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}{' (toy)' if a.toy else ''}; torch {torch.__version__}; micro batch 2 × {seq} tokens")
    for line in lines:
        print(line)
    return {"device": name, "deepspeed": lines}


if __name__ == "__main__":
    main()
