"""Training's fast paths give the padded, full-logit path's results in fp32, for a full fine-tune and for LoRA:
the LM head at labelled positions only, and padding-free packing (samples sharing rows, per-sample positions,
attention that never crosses samples) — the same per-sample logits (≤ 1e-5), loss (≤ 1e-6) and gradients."""

import pytest
import torch

from lmm.data.batch import Example, collate
from lmm.models.packing import row_layout
from lmm.text.templates import get_template
from lmm.text.tokenize import IGNORE_INDEX, tokenize_conversation
from lmm.training.stages import apply_stage

from .test_lora import _batch, _model, _randomize_adapters

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def _mixed_batch(tok):
    """Samples of four lengths, one long and multi-turn, so that packed rows (as wide as the longest sample) hold two
    samples each: packing has padding to skip and samples side by side to keep apart."""
    convs = [[("<image>\nWhat color is the circle?", "Red.")], [("Hi", "Hello there.")],
             [("<image>\nHow many shapes?", "Two shapes, a circle and a square.")],
             [("<image>\nWhat color is the circle?", "Red."), ("And the square?", "The square is blue and small."),
              ("How many shapes are there?", "There are two shapes: a red circle and a small blue square.")]]
    exs = []
    for k, turns in enumerate(convs):
        tk = tokenize_conversation(turns, get_template("vicuna_v1"), tok)
        exs.append(Example(str(k), tk.input_ids, tk.labels, torch.randn(1, 3, 28, 28) if k != 1 else None))
    return collate(exs, tok.pad_token_id)


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
    batch = _mixed_batch(tiny_tokenizer)
    spliced = model.splice(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    lengths = spliced.attention_mask.sum(1)
    assert len(set(lengths.tolist())) == 4 and row_layout(lengths, one_row=False).rows == 3  # 107 | 69 | 65+42
    ref, g_ref = _grads(model, batch)
    out, g_out = _grads(model, batch, **fast)
    assert ref.n_target_tokens == out.n_target_tokens > 0
    assert abs(float(ref.loss) - float(out.loss)) <= 1e-6
    assert g_ref.keys() == g_out.keys() and len(g_ref) > 0
    for name, g in g_ref.items():
        assert torch.allclose(g, g_out[name], atol=1e-6, rtol=1e-5), name
    valid = ref.attention_mask.bool()
    if fast.get("logits") == "labelled":  # the rows it returns: the full logits at the labelled positions
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


def test_packing_auto_packs_with_every_exact_attention_kernel(tiny_tokenizer):
    from lmm.training.module import LlavaLitModule

    model = _model(tiny_tokenizer)
    assert model.llm.config._attn_implementation == "sdpa"
    assert LlavaLitModule(model, ["connector"], 1e-3, packing="auto").packing is True
    model.llm.config._attn_implementation = "eager"
    assert LlavaLitModule(model, ["connector"], 1e-3, packing="auto").packing is True
    model.llm.config._attn_implementation = "some-hub-kernel"  # not known to keep packed samples apart: pad
    assert LlavaLitModule(model, ["connector"], 1e-3, packing="auto").packing is False
    assert LlavaLitModule(model, ["connector"], 1e-3, packing=False).packing is False
