"""Model parts: towers, connectors, splicing rules, batched generation."""

import pytest
import torch
from conftest import TINY_LLM, TINY_VISION

from lmm.data.batch import Example, collate
from lmm.models.build import build_llava
from lmm.models.connectors import build_connector
from lmm.models.vision import build_vision_tower
from lmm.text.templates import get_template
from lmm.text.tokenize import IGNORE_INDEX, tokenize_conversation, tokenize_prompt


def test_clip_tower_selects_penultimate_layer_and_drops_cls():
    tower = build_vision_tower(**TINY_VISION)
    x = torch.randn(2, 3, 28, 28)
    ref = tower.model(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(ref) == 4  # embeddings + 3 layers
    assert torch.equal(tower(x), ref[-2][:, 1:])
    assert tower.num_tokens == 16 and tower.num_prefix_tokens == 1
    keep = build_vision_tower(**{**TINY_VISION, "select_feature": "cls_patch"})
    keep.load_state_dict(tower.state_dict())
    assert torch.equal(keep(x), ref[-2]) and keep.num_tokens == 17
    assert not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.training  # frozen towers stay in eval mode


def test_timm_tower():
    tower = build_vision_tower(kind="timm", timm_name="vit_tiny_patch16_224", config=dict(
        img_size=28, patch_size=7, embed_dim=32, depth=3, num_heads=4))
    x = torch.randn(2, 3, 28, 28)
    feats = tower(x)
    assert feats.shape == (2, 16, 32)
    manual = tower.model.patch_embed(x)
    manual = tower.model._pos_embed(manual)
    manual = tower.model.norm_pre(tower.model.patch_drop(manual))
    for blk in tower.model.blocks[:2]:  # select_layer -2 = output of the second-to-last block
        manual = blk(manual)
    assert torch.allclose(feats, manual[:, 1:], atol=1e-6)


@pytest.mark.parametrize("name,depth", [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])
def test_mlp_connector_parsing(name, depth):
    conn = build_connector(name, 16, 24)
    linears = [m for m in conn if isinstance(m, torch.nn.Linear)]
    gelus = [m for m in conn if isinstance(m, torch.nn.GELU)]
    assert len(linears) == depth and len(gelus) == depth - 1
    assert linears[0].in_features == 16 and all(lin.out_features == 24 for lin in linears)
    with pytest.raises(ValueError, match="unknown connector"):
        build_connector("mlp2x_relu", 16, 24)


def test_qformer_connector_uses_own_queries():
    conn = build_connector("qformer", 16, 24, num_queries=5, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4)
    out = conn(torch.randn(3, 49, 16))
    assert out.shape == (3, 5, 24) and conn.query_tokens.shape == (1, 5, 32)
    assert conn.num_output_tokens(49) == 5


def _example(tok, turns, image=True, sid="x"):
    t = tokenize_conversation(turns, get_template("vicuna_v1"), tok)
    return Example(sid, t.input_ids, t.labels, torch.randn(1, 3, 28, 28) if image else None)


def test_text_only_batch_keeps_connector_in_graph(tiny_model, tiny_tokenizer):
    tiny_model.train()
    batch = collate([_example(tiny_tokenizer, [("Hi", "Hello.")], image=False)], tiny_tokenizer.pad_token_id)
    out = tiny_model(batch.input_ids, batch.attention_mask, batch.labels, None)
    out.loss.backward()
    grads = [p.grad for p in tiny_model.connector.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


def test_truncation_after_splice_masks_and_counts(tiny_tokenizer):
    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 60, tiny_tokenizer)
    ex = _example(tiny_tokenizer, [("<image>\nWhat is in the image?", "A red circle " * 20)])
    assert len(ex.input_ids) - 1 + model.num_image_tokens > 60
    batch = collate([ex], tiny_tokenizer.pad_token_id)
    out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    assert out.logits.shape[1] == 60 and out.n_truncated == 1


def test_marker_image_mismatch_is_a_clear_error(tiny_model, tiny_tokenizer):
    batch = collate([_example(tiny_tokenizer, [("<image>\nQ", "A")])], tiny_tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="1 <image> markers but 0 images"):
        tiny_model(batch.input_ids, batch.attention_mask, batch.labels, None)


def test_labels_ignored_at_image_positions(tiny_model, tiny_tokenizer):
    batch = collate([_example(tiny_tokenizer, [("<image>\nQ", "A")])], tiny_tokenizer.pad_token_id)
    s = tiny_model.splice(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    start = batch.input_ids[0].tolist().index(-200)
    assert (s.labels[0, start:start + tiny_model.num_image_tokens] == IGNORE_INDEX).all()


def test_batched_generation_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    tiny_model.eval()
    t = get_template("vicuna_v1")
    questions = ["<image>\nWhat color is the circle?", "<image>\nHow many shapes are there in this picture?",
                 "What is 2 plus 3?"]
    exs = []
    for k, q in enumerate(questions):
        ids = tokenize_prompt(t.generation_prompt([], q), tiny_tokenizer)
        exs.append(Example(str(k), ids, ids, torch.randn(1, 3, 28, 28) if "<image>" in q else None))
    kw = dict(max_new_tokens=8, eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    b = collate(exs, tiny_tokenizer.pad_token_id, "left")
    batched = tiny_model.generate(b.input_ids, b.attention_mask, b.pixel_values, **kw)
    single = []
    for e in exs:
        one = collate([e], tiny_tokenizer.pad_token_id, "left")
        single += tiny_model.generate(one.input_ids, one.attention_mask, one.pixel_values, **kw)
    assert batched == single and all(len(x) > 0 for x in single)


def test_flash_attention_without_flash_attn_names_the_extra():
    """``model.llm.attn_implementation=flash_attention_2`` without the optional ``flash`` extra: a clear error."""
    import importlib.util

    from lmm.models.llm import build_llm

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[flash\]'.*sdpa"):
        build_llm(**{**TINY_LLM, "config": {**TINY_LLM["config"], "vocab_size": 100}},
                  attn_implementation="flash_attention_2")
    assert build_llm(**TINY_LLM, attn_implementation="eager").config._attn_implementation == "eager"
