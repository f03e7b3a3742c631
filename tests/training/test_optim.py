"""The learning-rate schedule equals HF Trainer's (LLaVA's): linear warmup over ceil(0.03·steps), cosine to 0."""

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from lmm.training.optim import build_optimizer, warmup_cosine


@pytest.mark.parametrize("total", [1, 7, 100, 5198])
def test_schedule_equals_transformers(total):
    warmup = math.ceil(0.03 * total)  # TrainingArguments.get_warmup_steps with warmup_ratio 0.03
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    ours = warmup_cosine(total, 0.03)
    for step in range(total + 1):  # (past the end HF's cosine rises again; ours stays at 0 — never reached)
        assert ours(step) == pytest.approx(hf.lr_lambdas[0](step), abs=1e-12), step


def test_optimizer_is_adamw_with_hf_defaults_and_per_group_lr():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt, sched = build_optimizer([{"params": [a], "lr": 2e-5}, {"params": [b], "lr": 2e-4}], total_steps=100)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]  # step 0 of the warmup
    for _ in range(3):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-5, 2e-4])  # warmup (3 steps) done
