"""Training's fast paths give the padded, full-logit path's results in fp32, for a full fine-tune and for LoRA:
the LM head at labelled positions only, and padding-free packing (one sequence, per-sample positions, attention that
never crosses samples) — the same per-sample logits (≤ 1e-5), loss (≤ 1e-6) and gradients."""

import pytest
import torch

from lmm.text.tokenize import IGNORE_INDEX
from lmm.training.stages import apply_stage

from .test_lora import _batch, _model, _randomize_adapters

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def _grads(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, **kw)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
@pytest.mark.parametrize("fast", [dict(logits="labelled"), dict(packed=True),
                                  dict(logits="labelled", packed=True)], ids=["labelled", "packed", "both"])
def test_fast_paths_give_the_padded_full_logit_results(tiny_tokenizer, lora, fast):
    model = _model(tiny_tokenizer)
    apply_stage(model, ["connector", "llm"], lora)
    if lora:
        _randomize_adapters(model)
    batch = _batch(tiny_tokenizer)
    assert len(set(batch.attention_mask.sum(1).tolist())) == 3  # three lengths: real padding to skip
    ref, g_ref = _grads(model, batch)
    out, g_out = _grads(model, batch, **fast)
    assert ref.n_target_tokens == out.n_target_tokens > 0
    assert abs(float(ref.loss) - float(out.loss)) <= 1e-6
    assert g_ref.keys() == g_out.keys() and len(g_ref) > 0
    for name, g in g_ref.items():
        assert torch.allclose(g, g_out[name], atol=1e-6, rtol=1e-5), name
    valid = ref.attention_mask.bool()
    if fast.get("logits") == "labelled":  # the rows it returns: the full logits at the labelled positions
        spliced = model.splice(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
        where = spliced.labels[:, 1:] != IGNORE_INDEX
        assert torch.allclose(out.logits, ref.logits[:, :-1][where].detach(), atol=1e-5)
    else:  # packed, all logits: every sample's logits as in the padded batch
        assert torch.allclose(out.logits[valid], ref.logits[valid].detach(), atol=1e-5)


def test_a_batch_without_targets_gives_a_zero_loss_with_a_graph(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    apply_stage(model, ["connector", "llm"])
    batch = _batch(tiny_tokenizer)
    labels = torch.full_like(batch.labels, IGNORE_INDEX)
    for kw in (dict(logits="labelled"), dict(logits="labelled", packed=True)):
        out = model(batch.input_ids, batch.attention_mask, labels, batch.pixel_values, **kw)
        assert float(out.loss) == 0.0 and out.loss.requires_grad and out.fully_masked == [0, 1, 2]
    with pytest.raises(ValueError, match="logits must be"):
        model(batch.input_ids, batch.attention_mask, labels, batch.pixel_values, logits="some")
