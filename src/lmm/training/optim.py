"""AdamW (weight decay 0; fused on a GPU) with linear warmup (ratio 0.03) then cosine to 0, per optimizer step
(HF's schedule)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(total_steps: int, warmup_ratio: float = 0.03):
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


def build_optimizer(groups: list[dict], total_steps: int, warmup_ratio: float = 0.03,
                    betas=(0.9, 0.999), eps: float = 1e-8):
    params = [p for g in groups for p in g["params"]]
    # one fused kernel for all parameters on a GPU (plain fp32 CUDA tensors; FSDP's sharded DTensors and DeepSpeed's
    # bf16 module keep the default implementation); the per-tensor loop elsewhere
    fused = bool(params) and all(p.is_cuda and p.dtype == torch.float32 and type(p.data) is torch.Tensor
                                 for p in params)
    opt = torch.optim.AdamW(groups, betas=tuple(betas), eps=eps, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup_ratio))
    return opt, sched
