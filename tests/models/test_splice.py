"""The batched ``LlavaModel.splice`` against a per-sample reference restated from LLaVA's
``prepare_inputs_labels_for_multimodal`` (llava/model/llava_arch.py): the same embeddings, masks, position ids and
labels, bit for bit, and the same gradients (to 1e-6: the reference looks embeddings up row by row) — on random batches with left or right padding in and out, rows with
0, 1 or several markers, HD-like images of different token counts, labels or none, and truncation after the splice
that cuts inside an image or inside text."""

import random

import pytest
import torch
from torch import nn

from lmm.models.llava import LlavaModel
from lmm.text.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX

VOCAB, H, VISION_H = 40, 8, 6


def reference_splice(embed, input_ids, attention_mask, labels, image_feats, max_length, padding_side):
    """LLaVA's loop, one sample at a time. ``image_feats``: one ``[T_k, H]`` per marker in row-major order. As in
    our spec (unlike LLaVA, whose collator gives text-only samples a dummy image) a text-only row takes no image."""
    rows_e, rows_l, k = [], [], 0
    for i in range(input_ids.shape[0]):
        keep = attention_mask[i].bool()  # drop the padding (either side)
        ids = input_ids[i][keep]
        lab = labels[i][keep] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
        cuts = [-1] + torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist() + [len(ids)]
        ids_noim = [ids[cuts[j] + 1:cuts[j + 1]] for j in range(len(cuts) - 1)]
        lab_noim = [lab[cuts[j] + 1:cuts[j + 1]] for j in range(len(cuts) - 1)]
        text_e = embed(torch.cat(ids_noim)).split([len(x) for x in ids_noim])
        parts_e, parts_l = [], []
        for j in range(len(ids_noim)):
            parts_e.append(text_e[j])
            parts_l.append(lab_noim[j])
            if j < len(ids_noim) - 1:  # a marker: the next image's features, no labels there
                parts_e.append(image_feats[k])
                parts_l.append(torch.full((image_feats[k].shape[0],), IGNORE_INDEX, dtype=lab.dtype))
                k += 1
        rows_e.append(torch.cat(parts_e)[:max_length])  # truncated after the splice
        rows_l.append(torch.cat(parts_l)[:max_length])
    B, T = len(rows_e), max(len(r) for r in rows_e)
    out_e = torch.zeros(B, T, H)
    out_m = torch.zeros(B, T, dtype=attention_mask.dtype)
    out_p = torch.zeros(B, T, dtype=torch.long)
    out_l = torch.full((B, T), IGNORE_INDEX, dtype=input_ids.dtype)
    for i, (e, lab) in enumerate(zip(rows_e, rows_l)):
        n = len(e)
        sl = slice(0, n) if padding_side == "right" else slice(T - n, T)
        out_e[i, sl], out_m[i, sl], out_p[i, sl], out_l[i, sl] = e, 1, torch.arange(n), lab
    return out_e, out_m, out_p, out_l if labels is not None else None


class _LLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, H)

    def get_input_embeddings(self):
        return self.embed


class _Vision(nn.Module):
    hidden_size = VISION_H


def _random_batch(rng, pad_left):
    B = rng.randrange(1, 6)
    rows = []
    for _ in range(B):
        ids = [rng.randrange(1, VOCAB) for _ in range(rng.choice([1, 3, 8, 20]))]
        for p in rng.sample(range(len(ids)), min(rng.choice([0, 1, 1, 2, 3]), len(ids))):
            ids[p] = IMAGE_TOKEN_INDEX
        rows.append(ids)
    L = max(len(r) for r in rows)
    input_ids = torch.tensor([[rng.randrange(0, VOCAB) for _ in range(L)] for _ in rows])  # padding: any id
    labels = torch.tensor([[rng.randrange(0, VOCAB) for _ in range(L)] for _ in rows])
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(L - len(r), L) if pad_left else slice(0, len(r))
        input_ids[i, sl], mask[i, sl] = torch.tensor(r), 1
        labels[i, sl] = torch.tensor([t if t >= 0 and rng.random() < 0.7 else IGNORE_INDEX for t in r])
    return input_ids, mask, labels


def _layout(input_ids, mask, feats, max_length):
    """Each row's length after the splice, and whether ``max_length`` cuts inside an image / inside text."""
    lens, cut_image, cut_text, k = [], False, False, 0
    for i in range(len(input_ids)):
        n = 0
        for t in input_ids[i][mask[i].bool()].tolist():
            size = feats[k].shape[0] if t == IMAGE_TOKEN_INDEX else 1
            k += t == IMAGE_TOKEN_INDEX
            cut_image |= n < max_length < n + size
            cut_text |= n == max_length and t != IMAGE_TOKEN_INDEX
            n += size
        lens.append(n)
    return lens, cut_image, cut_text


@pytest.mark.parametrize("hd", [False, True], ids=["fixed", "hd"])
@pytest.mark.parametrize("pad_in", ["right", "left"])
@pytest.mark.parametrize("pad_out", ["right", "left"])
def test_splice_matches_llava_reference(hd, pad_in, pad_out):
    rng = random.Random(f"{hd}{pad_in}{pad_out}")
    torch.manual_seed(0)
    cut = {"image": 0, "text": 0}  # how often truncation fell inside an image / inside text
    for _ in range(25):
        input_ids, mask, labels = _random_batch(rng, pad_in == "left")
        if rng.random() < 0.3:
            labels = None
        n_img = int((input_ids[mask.bool()] == IMAGE_TOKEN_INDEX).sum())
        if hd:  # a different number of tokens per image, as HD gives
            feats = [torch.randn(rng.randrange(1, 10), H, requires_grad=True) for _ in range(n_img)]
            given, grids = list(feats), torch.zeros(n_img, 7, dtype=torch.long)
        else:
            given = torch.randn(n_img, rng.choice([1, 5]), H, requires_grad=True)
            feats, grids = list(given.unbind(0)), None
        max_length = rng.choice([2, 6, 12, 25, 1000])
        model = LlavaModel(_Vision(), nn.Linear(VISION_H, H), _LLM(), max_length)
        model.image_features = lambda pixel_values, image_grids, given=given: given
        s = model.splice(input_ids, mask, labels, torch.zeros(n_img, 1) if n_img else None, pad_out, grids)
        ref = reference_splice(model.llm.embed, input_ids, mask, labels, feats, max_length, pad_out)
        assert torch.equal(s.inputs_embeds, ref[0])
        assert s.attention_mask.dtype == ref[1].dtype and torch.equal(s.attention_mask, ref[1])
        assert s.position_ids.dtype == torch.long and torch.equal(s.position_ids, ref[2])
        assert (s.labels is None) == (labels is None) and (labels is None or torch.equal(s.labels, ref[3]))
        lens, cut_image, cut_text = _layout(input_ids, mask, feats, max_length)
        cut["image"] += cut_image
        cut["text"] += cut_text
        assert s.n_truncated == sum(n > max_length for n in lens)
        # gradients: to the embeddings and to every image's features (none past the cut)
        w = torch.randn(s.inputs_embeds.shape)
        leaves = [model.llm.embed.weight] + ((feats if hd else [given]) if n_img else [])
        got = torch.autograd.grad((s.inputs_embeds * w).sum(), leaves)
        want = torch.autograd.grad((ref[0] * w).sum(), leaves)
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)
    assert cut["image"] > 0 and cut["text"] > 0  # truncation was exercised inside an image and inside text


def test_text_only_batch_keeps_connector_in_graph():
    model = LlavaModel(_Vision(), nn.Linear(VISION_H, H), _LLM(), 100).train()
    ids, mask = torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    s = model.splice(ids, mask, ids, None)
    assert torch.equal(s.inputs_embeds[0], model.llm.embed(ids[0]))
    s.inputs_embeds.sum().backward()
    assert model.connector.weight.grad is not None and not model.connector.weight.grad.any()
