"""LLaVA-1.5-HD: grid choice, cells, padding features dropped, row-end tokens, global context, mixed-grid batches."""

import numpy as np
import pytest
import torch
from conftest import TINY_LLM, TINY_VISION
from PIL import Image

from lmm.data.batch import Example, collate
from lmm.data.hd_cells import (
    HDImageTransform,
    candidate_grids,
    image_transform_for,
    select_grid,
    transform_images,
)
from lmm.data.images import ImageTransform
from lmm.models.build import build_llava
from lmm.text.templates import get_template
from lmm.text.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, tokenize_conversation, tokenize_prompt
from lmm.training.stages import apply_stage, param_groups

S, P, G = 28, 7, 4  # tiny tower: 28 px cells, 7 px patches, 4×4 features per cell


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hd_model(tok, global_context=True, **kw):
    torch.manual_seed(0)
    return build_llava(TINY_VISION, kw.pop("connector", {"name": "mlp2x_gelu"}), TINY_LLM, 512, tok,
                       hd={"enabled": True, "max_cells": 6, "global_context": global_context}, **kw).eval()


def test_candidate_grids_are_the_papers():
    grids = set(candidate_grids(6))
    paper = {(1, c) for c in range(1, 7)} | {(c, 1) for c in range(1, 7)} | {(2, 2), (2, 3), (3, 2)}
    assert grids == paper


@pytest.mark.parametrize("w,h,grid", [
    (224, 224, (1, 1)), (100, 100, (1, 1)),        # small images are not upscaled into more cells
    (448, 448, (2, 2)), (1000, 1000, (2, 2)),      # square: 2x2 (2x3 shows no more pixels, pads more)
    (672, 448, (2, 3)), (448, 672, (3, 2)),        # 3:2 landscape / portrait
    (448, 224, (1, 2)), (224, 448, (2, 1)), (300, 200, (1, 2)),
    (1344, 224, (1, 6)), (224, 1344, (6, 1)), (2000, 150, (1, 6)),  # extreme strips
    (1000, 100, (1, 5)),  # 1x5 already shows all 100k pixels (1120x112); 1x6 would only pad more
    (900, 300, (1, 3)), (1200, 700, (2, 3)),
])
def test_grid_selection(w, h, grid):
    assert select_grid(w, h, 224, 6) == grid


def test_cells_are_the_padded_canvas_cut_row_major():
    img = _image(56, 8)  # fits a 1x2 canvas (56x28) at scale 1: 10 px of padding above, 10 below
    out = HDImageTransform(S, 6, True)(img)
    assert out.layout == (1, 2, 10, 0, 8, 56, 1) and out.pixel_values.shape == (3, 3, S, S)
    ref = ImageTransform(S, "pad")
    assert torch.equal(out.pixel_values[0], ref(img))  # the global view comes first
    mean, std = torch.tensor(ref.mean).view(3, 1), torch.tensor(ref.std).view(3, 1)
    raw = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
    content = (raw - mean.unsqueeze(-1)) / std.unsqueeze(-1)
    for k in range(2):  # cell k = columns [28k, 28k+28) of the image, rows 10..17 of the cell
        assert torch.allclose(out.pixel_values[1 + k, :, 10:18], content[:, :, 28 * k:28 * (k + 1)], atol=1e-6)
        pad = out.pixel_values[1 + k, :, :10].reshape(3, -1)
        bg = (torch.tensor([int(x * 255) for x in ref.mean]).view(3, 1) / 255.0 - mean) / std
        assert torch.allclose(pad, bg.expand_as(pad), atol=1e-6)
    tall = HDImageTransform(S, 6, False)(_image(20, 50))  # 2x1 canvas 28x56: scaled by 1.12 to 22x56
    assert tall.grid == (2, 1) and tall.layout[2:] == (0, 3, 56, 22, 0) and tall.pixel_values.shape[0] == 2


def test_padding_features_removed_and_row_end_tokens_placed(tiny_tokenizer):
    model = _hd_model(tiny_tokenizer)
    hd, H = model.hd, model.llm.config.hidden_size
    # Synthetic connector output: feature value = (view, patch index), to follow every token to its source.
    layouts = torch.tensor([[1, 2, 10, 0, 8, 56, 1],   # wide: padding rows above and below
                            [2, 1, 0, 10, 56, 8, 1],   # tall: padding columns left and right
                            [2, 3, 0, 0, 56, 84, 1]])  # no padding
    n_views = hd.num_views(layouts)
    feats = torch.zeros(n_views, G * G, H)
    feats[..., 0] = torch.arange(n_views).view(-1, 1).float()
    feats[..., 1] = torch.arange(G * G).view(1, -1).float()
    out = hd(feats, layouts)
    # wide: the merged 4x8 map keeps feature rows 1..2 (pixels 7..20 touch the content 10..17), all 8 columns
    # tall: the 8x4 map keeps columns 1..2 (pixels 7..20 touch the content 10..17), all 8 rows; no padding: 8x12
    expect = [(2, 8, (1, 3), (0, 8)), (8, 2, (0, 8), (1, 3)), (8, 12, (0, 8), (0, 12))]
    v = 0
    for img, (R, C, (r0, r1), (c0, c1)) in enumerate(expect):
        rows, cols = layouts[img, :2].tolist()
        assert out[img].shape == (G * G + R * (C + 1), H) == (hd.num_tokens(layouts[img]), H)
        glob, grid = out[img][: G * G], out[img][G * G:].view(R, C + 1, H)
        assert torch.equal(glob[:, 0], torch.full((G * G,), float(v)))  # global view first, whole
        assert torch.equal(grid[:, -1], model.hd.row_end.detach().expand(R, H))  # one row-end per row, at its end
        for i, r in enumerate(range(r0, r1)):
            for j, c in enumerate(range(c0, c1)):
                cell, pr, pc = (r // G) * cols + c // G, r % G, c % G
                assert grid[i, j, 0] == v + 1 + cell and grid[i, j, 1] == pr * G + pc
        assert not (grid[:, :-1] == model.hd.row_end.detach()).all(-1).any()
        v += 1 + rows * cols
    with pytest.raises(ValueError, match="content box"):
        hd.check(torch.tensor([[2, 1, 0, 18, 56, 20, 1]]), 3)


def test_global_context_switch(tiny_tokenizer):
    img = _image(100, 60)
    on, off = _hd_model(tiny_tokenizer, True), _hd_model(tiny_tokenizer, False)
    t_on, t_off = image_transform_for(on), image_transform_for(off)
    assert isinstance(t_on, HDImageTransform) and t_on.global_context and not t_off.global_context
    x_on, g_on = transform_images(t_on, [img])
    x_off, g_off = transform_images(t_off, [img])
    assert g_on[0, :6].tolist() == g_off[0, :6].tolist() == [2, 3, 3, 0, 50, 84]
    assert x_on.shape[0] == x_off.shape[0] + 1 and torch.equal(x_on[1:], x_off)
    with torch.no_grad():
        f_on, f_off = on.image_features(x_on, g_on)[0], off.image_features(x_off, g_off)[0]
    R, C = 8, 12  # 50 px content rows 3..52 touch feature rows 0..7; 84 px wide = 12 columns
    assert f_off.shape[0] == R * (C + 1) and f_on.shape[0] == G * G + R * (C + 1)
    assert torch.allclose(f_on[G * G:], f_off, atol=1e-6)  # same weights (seed): the grid part is identical
    with pytest.raises(ValueError, match="global_context=False"):
        off.image_features(x_on, g_on)
    with pytest.raises(ValueError, match="needs image_grids"):
        on.image_features(x_on, None)


def _hd_example(tok, turns, images, transform, sid):
    t = tokenize_conversation(turns, get_template("vicuna_v1"), tok)
    pixels, grids = transform_images(transform, images)
    return Example(sid, t.input_ids, t.labels, pixels, image_grids=grids)


def test_batch_with_different_grids_forward_backward_generate(tiny_tokenizer):
    model = _hd_model(tiny_tokenizer)
    tr = image_transform_for(model)
    sizes = [(28, 28), (100, 60), (8, 56)]
    exs = [_hd_example(tiny_tokenizer, [("<image>\nWhat is shown?", "Shapes.")], [_image(w, h, k)], tr, str(k))
           for k, (w, h) in enumerate(sizes)]
    exs.append(_hd_example(tiny_tokenizer, [("Hi", "Hello.")], [], tr, "text"))
    exs.append(_hd_example(tiny_tokenizer, [("<image>\nA<image>\nB", "C.")], [_image(60, 30, 7), _image(30, 30, 8)],
                           tr, "two"))
    batch = collate(exs, tiny_tokenizer.pad_token_id)
    grids = batch.image_grids
    assert grids.shape == (5, 7) and {tuple(g) for g in grids[:, :2].tolist()} == {(1, 1), (2, 3), (2, 1), (2, 2)}
    assert batch.pixel_values.shape[0] == model.hd.num_views(grids)
    n_tok = [model.hd.num_tokens(g) for g in grids]
    assert len(set(n_tok)) >= 3  # a different number of image tokens per image
    s = model.splice(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, "right", grids)
    for i, e in enumerate(exs):  # each sample grows by the token counts of its own images
        imgs = [n_tok[k] for k in range(sum(len(x.image_grids) for x in exs[:i] if x.image_grids is not None),
                                        sum(len(x.image_grids) for x in exs[:i + 1] if x.image_grids is not None))]
        assert int(s.attention_mask[i].sum()) == len(e.input_ids) - len(imgs) + sum(imgs)
        assert int((s.labels[i] != IGNORE_INDEX).sum()) == sum(x != IGNORE_INDEX for x in e.labels)
    model.train()
    apply_stage(model, ["connector", "llm"])
    out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, image_grids=grids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.hd.row_end.grad is not None and model.hd.row_end.grad.abs().sum() > 0
    assert any(g["name"] == "llm" and any(p is model.hd.row_end for p in g["params"])
               for g in param_groups(model, 1e-3, 1e-4))
    model.eval()
    t = get_template("vicuna_v1")
    prompts = [("<image>\nWhat color?", _image(28, 28, 1)), ("<image>\nDescribe.", _image(100, 60, 2)),
               ("What is 2 plus 3?", None), ("<image>\nTall?", _image(8, 56, 3))]
    gex = []
    for k, (q, im) in enumerate(prompts):
        ids = tokenize_prompt(t.generation_prompt([], q), tiny_tokenizer)
        assert (IMAGE_TOKEN_INDEX in ids) == (im is not None)
        pixels, g = transform_images(tr, [im] if im is not None else [])
        gex.append(Example(str(k), ids, ids, pixels, image_grids=g))
    kw = dict(max_new_tokens=6, eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    b = collate(gex, tiny_tokenizer.pad_token_id, "left")
    batched = model.generate(b.input_ids, b.attention_mask, b.pixel_values, image_grids=b.image_grids, **kw)
    single = []
    for e in gex:
        one = collate([e], tiny_tokenizer.pad_token_id, "left")
        single += model.generate(one.input_ids, one.attention_mask, one.pixel_values, image_grids=one.image_grids,
                                 **kw)
    assert batched == single and all(len(x) > 0 for x in single)


def test_hd_config_errors_and_checkpoint_round_trip(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="token-wise connector"):
        _hd_model(tiny_tokenizer, connector={"name": "qformer", "num_queries": 4, "hidden_size": 32,
                                             "num_hidden_layers": 1, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="select_feature 'patch'"):
        torch.manual_seed(0)
        build_llava({**TINY_VISION, "select_feature": "cls_patch"}, {"name": "mlp2x_gelu"}, TINY_LLM, 512,
                    tiny_tokenizer, hd={"enabled": True})
    with pytest.raises(ValueError, match="unknown model.hd keys"):
        build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer, hd={"enabled": True, "x": 1})
    assert build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer,
                       hd={"enabled": False}).hd is None
    plain = collate([Example("p", [1, IMAGE_TOKEN_INDEX], [1, IGNORE_INDEX], torch.zeros(1, 3, S, S))], 0)
    with pytest.raises(ValueError, match="needs image_grids"):
        _hd_model(tiny_tokenizer)(plain.input_ids, plain.attention_mask, plain.labels, plain.pixel_values)
    from lmm.models.checkpoint import load_model_dir, save_model_dir

    model = _hd_model(tiny_tokenizer, global_context=False)
    hd_cfg = {"enabled": True, "max_cells": 6, "global_context": False}
    spec = {"model": {"vision": TINY_VISION, "connector": {"name": "mlp2x_gelu"}, "llm": TINY_LLM,
                      "max_length": 512, "hd": hd_cfg}, "max_length": 512}
    save_model_dir(model, tiny_tokenizer, spec, tmp_path / "m")
    loaded, _, _ = load_model_dir(tmp_path / "m")
    assert loaded.hd is not None and not loaded.hd.global_context
    assert torch.equal(loaded.hd.row_end, model.hd.row_end)


def test_hd_can_be_off_for_a_stage(tiny_tokenizer):
    model = _hd_model(tiny_tokenizer)
    model.hd_active = False  # e.g. stage 1: the paper's HD model gets no HD pretraining
    tr = image_transform_for(model)
    assert type(tr) is ImageTransform
    rows = {r["module"]: r for r in apply_stage(model, ["connector"])}
    assert rows["hd"]["trainable"] == 0 and rows["connector"]["trainable"] > 0 and not model.hd.row_end.requires_grad
    ex = _hd_example(tiny_tokenizer, [("<image>\nWhat is shown?", "Shapes.")], [_image(100, 60)], tr, "p")
    assert ex.image_grids is None and ex.pixel_values.shape == (1, 3, S, S)
    batch = collate([ex], tiny_tokenizer.pad_token_id)
    model.train()
    out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    assert int(out.attention_mask.sum()) == len(ex.input_ids) - 1 + G * G  # plain: g² tokens, no row-ends
    out.loss.backward()
    with pytest.raises(ValueError, match="HD is off"):
        model.image_features(*transform_images(HDImageTransform(S), [_image(100, 60)]))
