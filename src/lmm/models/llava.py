"""The LLaVA module: encode images → connector → splice the features into the token embeddings.

Splicing follows LLaVA's ``prepare_inputs_labels_for_multimodal`` (spec §1.3): each ``IMAGE_TOKEN_INDEX`` marker
in ``input_ids`` is replaced by that image's features (labels ignored there); text-only samples consume no image;
the sequence is truncated to ``max_length`` *after* the splice; padding goes right for training and left for
generation, with position ids counted from each sample's first real token.

With ``hd`` (an :class:`~lmm.models.hd.HDMerger`, LLaVA-1.5-HD) an image is several views (``image_grids`` gives
each image's layout) and yields a variable number of tokens; the splice places them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmm.models.hd import HDMerger
from lmm.models.vision import VisionTower
from lmm.text.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class Spliced:
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    n_truncated: int


@dataclass
class LlavaOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    n_target_tokens: int
    n_truncated: int
    attention_mask: torch.Tensor
    fully_masked: list[int]  # rows whose every label is ignored after splice + truncation


class LlavaModel(nn.Module):
    def __init__(self, vision: VisionTower, connector: nn.Module, llm: nn.Module, max_length: int = 2048,
                 hd: HDMerger | None = None):
        super().__init__()
        self.vision, self.connector, self.llm = vision, connector, llm
        self.max_length = max_length
        self.hd = hd
        # HD can be switched off for a stage (the paper's HD model has no HD pretraining): images are then plain.
        self.hd_active = hd is not None

    @property
    def num_image_tokens(self) -> int:
        return self.connector.num_output_tokens(self.vision.num_tokens)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.vision(pixel_values)
        dtype = next(self.connector.parameters(), feats).dtype
        return self.connector(feats.to(dtype))

    def image_features(self, pixel_values: torch.Tensor, image_grids: torch.Tensor | None = None
                       ) -> torch.Tensor | list[torch.Tensor]:
        """``[n_images, T, H]``; with HD a list of ``[T_i, H]`` (every view is encoded in one batch)."""
        if self.hd is None or not self.hd_active:
            if image_grids is not None:
                raise ValueError("image_grids were given but HD is off (model.hd.enabled false, or hd_active False)")
            return self.encode_images(pixel_values)
        if image_grids is None:
            raise ValueError("an HD model needs image_grids: prepare images with lmm.models.hd.image_transform_for")
        self.hd.check(image_grids, pixel_values.shape[0])
        return self.hd(self.encode_images(pixel_values), image_grids)

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
               pixel_values: torch.Tensor | None, padding_side: str = "right",
               image_grids: torch.Tensor | None = None) -> Spliced:
        embed = self.llm.get_input_embeddings()
        is_marker = input_ids == IMAGE_TOKEN_INDEX
        text_embeds = embed(input_ids.masked_fill(is_marker, 0))
        n_markers = int(is_marker.sum())
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if image_grids is not None and pixel_values is not None:
            n_images = image_grids.shape[0]  # HD: pixel_values holds several views per image
        if n_markers != n_images:
            raise ValueError(f"the batch has {n_markers} <image> markers but {n_images} images")
        image_feats = None
        if n_images:
            image_feats = [f.to(text_embeds.dtype) for f in self.image_features(pixel_values, image_grids)]

        rows_e, rows_l, img = [], [], 0
        for i in range(input_ids.shape[0]):
            valid = attention_mask[i].bool()
            ids, emb = input_ids[i][valid], text_embeds[i][valid]
            lab = labels[i][valid] if labels is not None else None
            cuts = [-1] + torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist() + [ids.shape[0]]
            parts_e, parts_l = [], []
            for k in range(len(cuts) - 1):
                a, b = cuts[k] + 1, cuts[k + 1]
                parts_e.append(emb[a:b])
                if lab is not None:
                    parts_l.append(lab[a:b])
                if k < len(cuts) - 2:
                    parts_e.append(image_feats[img])
                    if lab is not None:
                        parts_l.append(lab.new_full((image_feats[img].shape[0],), IGNORE_INDEX))
                    img += 1
            rows_e.append(torch.cat(parts_e))
            rows_l.append(torch.cat(parts_l) if lab is not None else None)

        if image_feats is None and self.training and any(p.requires_grad for p in self.connector.parameters()):
            # A text-only batch: keep the connector in the graph with a zero contribution (LLaVA's [0:0] slice),
            # so DDP / ZeRO see a gradient (of zeros) for every trainable parameter.
            probe = next(self.connector.parameters())
            dummy = self.connector(torch.zeros(1, 1, self.vision.hidden_size, dtype=probe.dtype,
                                               device=text_embeds.device))
            rows_e[0] = rows_e[0] + 0.0 * dummy.sum()
            if self.hd is not None and self.hd_active and self.hd.row_end.requires_grad:
                rows_e[0] = rows_e[0] + 0.0 * self.hd.row_end.sum()

        n_truncated = sum(int(r.shape[0] > self.max_length) for r in rows_e)
        rows_e = [r[: self.max_length] for r in rows_e]
        rows_l = [r[: self.max_length] if r is not None else None for r in rows_l]
        B, T, H = len(rows_e), max(r.shape[0] for r in rows_e), text_embeds.shape[-1]
        out_e = text_embeds.new_zeros(B, T, H)
        out_m = attention_mask.new_zeros(B, T)
        out_p = torch.zeros(B, T, dtype=torch.long, device=input_ids.device)
        out_l = input_ids.new_full((B, T), IGNORE_INDEX) if labels is not None else None
        for i, r in enumerate(rows_e):
            n = r.shape[0]
            sl = slice(0, n) if padding_side == "right" else slice(T - n, T)
            out_e[i, sl] = r
            out_m[i, sl] = 1
            out_p[i, sl] = torch.arange(n, device=input_ids.device)
            if out_l is not None:
                out_l[i, sl] = rows_l[i]
        return Spliced(out_e, out_m, out_p, out_l, n_truncated)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grids: torch.Tensor | None = None,
                logits: str = "all", packed: bool = False) -> LlavaOutput:
        """The spliced forward pass and the loss: the mean cross-entropy over the micro-batch's target tokens
        (LLaVA / HF).

        ``logits="all"`` returns the logits of every position (``[B, T, vocab]``); ``logits="labelled"`` (training)
        runs the LM head only where a label is — image tokens, the system prompt, questions and padding teach
        nothing, and their logits are most of a stage-2 batch's memory (16 × 2048 × 32K fp32 ≈ 4 GB) — and returns
        those rows only (``[n_target_tokens, vocab]``). ``packed=True`` runs the LLM padding-free: the micro-batch's
        samples as one sequence with per-sample position ids and no attention mask, from which transformers builds
        attention that never crosses samples (a block-causal mask for SDPA / eager / flex, varlen FlashAttention-2).
        Both give the padded path's loss and gradients (tests/models/test_fast_paths.py)."""
        if logits not in ("all", "labelled"):
            raise ValueError(f"logits must be 'all' or 'labelled', got {logits!r}")
        s = self.splice(input_ids, attention_mask, labels, pixel_values, "right", image_grids)
        keep = s.attention_mask.bool()
        if packed:  # [1, N]: the samples one after the other; a sample's first token is no target of the one before
            pos = s.position_ids[keep].unsqueeze(0)
            kwargs = dict(inputs_embeds=s.inputs_embeds[keep].unsqueeze(0), attention_mask=None, position_ids=pos)
            seq_labels = None if s.labels is None else s.labels[keep].unsqueeze(0).masked_fill(pos == 0, IGNORE_INDEX)
        else:
            kwargs = dict(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, position_ids=s.position_ids)
            seq_labels = s.labels
        shift_labels = seq_labels[:, 1:] if seq_labels is not None else None
        if logits == "labelled" and shift_labels is not None:
            hidden = self.llm.get_decoder()(**kwargs, use_cache=False).last_hidden_state
            where = shift_labels != IGNORE_INDEX
            out_logits = self.llm.get_output_embeddings()(hidden[:, :-1][where])
            scored, targets = out_logits, shift_labels[where]
        else:
            out_logits = self.llm(**kwargs, use_cache=False).logits
            scored, targets = out_logits[:, :-1], shift_labels
            if packed:  # back to the padded layout callers expect (zeros at padding)
                padded = out_logits.new_zeros(*keep.shape, out_logits.shape[-1])
                padded[keep] = out_logits[0]
                out_logits = padded
        loss, n_tok, masked = out_logits.new_zeros(()), 0, []
        if s.labels is not None:
            masked = torch.nonzero((s.labels == IGNORE_INDEX).all(dim=1)).flatten().tolist()
            n_tok = int((targets != IGNORE_INDEX).sum())
            ce = F.cross_entropy(scored.float().reshape(-1, scored.shape[-1]), targets.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
            # Mean over the micro-batch's target tokens (LLaVA / HF); a batch without targets gives a zero loss
            # that still carries a graph instead of NaN — and is counted by the masked-sample guard.
            loss = ce / max(n_tok, 1)
        return LlavaOutput(loss, out_logits, n_tok, s.n_truncated, s.attention_mask, masked)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                 max_new_tokens: int = 128, eos_token_id: int | None = None, pad_token_id: int = 0,
                 image_grids: torch.Tensor | None = None) -> list[list[int]]:
        """Greedy decoding with the KV cache, batched (left padding); returns the new tokens of each sample."""
        s = self.splice(input_ids, attention_mask, None, pixel_values, "left", image_grids)
        out = self.llm.generate(
            inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            temperature=None, top_p=None, top_k=None,
        )
        results = []
        for row in out.tolist():
            if eos_token_id is not None and eos_token_id in row:
                row = row[: row.index(eos_token_id)]
            results.append(row)
        return results
