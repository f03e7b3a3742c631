"""Numerics of a training run: fp32 master weights for what trains, the Lightning precision, TF32.

LLaVA trains in bf16 under DeepSpeed, which keeps an fp32 master copy of every trainable weight and fp32 Adam
moments. A model loaded in bf16 and stepped by plain AdamW under ``bf16-mixed`` would keep weights and moments in
bf16 instead, and an update of lr 2e-5 × O(1) is below bf16's resolution for weights of magnitude ≳ 0.01: it rounds
away. So every strategy here holds trainable parameters in fp32 (autocast computes in bf16 from them); frozen
parts may stay in bf16. DeepSpeed takes the bf16 model and keeps its own fp32 masters (``bf16.enabled``).
"""

from __future__ import annotations

import torch
from torch import nn

TRAINING_PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")


class MasterWeightError(RuntimeError):
    pass


def resolve_precision(precision: str | None, accelerator_is_gpu: bool) -> str:
    """The Lightning precision of a training stage: ``null`` → bf16-mixed on GPU, fp32 on CPU.

    ``bf16-true`` / ``16-true`` are refused: they put the weights themselves (and so the optimizer's view of them)
    in 16 bits, the very thing fp32 masters avoid."""
    precision = str(precision) if precision is not None else ("bf16-mixed" if accelerator_is_gpu else "32-true")
    if precision not in TRAINING_PRECISIONS:
        raise MasterWeightError(
            f"trainer.precision={precision!r} would train 16-bit weights without fp32 masters (updates of lr 2e-5 "
            f"round away in bf16). Use bf16-mixed (bf16 compute, fp32 weights and AdamW state), or 32-true.")
    return precision


def keep_fp32_masters(model: nn.Module) -> int:
    """Cast every trainable parameter to fp32 in place (frozen ones keep their dtype); return how many were cast."""
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


def check_fp32_masters(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Raise :class:`MasterWeightError` if a trainable parameter, or a floating tensor of its optimizer state, is not
    fp32 (a DTensor shard counts by its local dtype)."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if optimizer is not None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key, v in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0 and v.dtype != torch.float32:
                        bad.append(f"optimizer state {key} ({v.dtype})")
    if bad:
        raise MasterWeightError(
            f"{len(bad)} trainable parameter(s) / optimizer states are not fp32 (first: {bad[:3]}): updates would "
            f"round away in 16 bits. Keep masters in fp32 (lmm.training.precision.keep_fp32_masters).")


def set_tf32(enabled: bool) -> bool:
    """TF32 for fp32 matmuls and convolutions on Ampere+ GPUs (LLaVA's ``--tf32 True``; no effect on a CPU).
    ``False`` leaves PyTorch's defaults alone. Returns whether TF32 matmuls are now allowed."""
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    return torch.backends.cuda.matmul.allow_tf32
