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
from lmm.models.packing import pack, row_layout, sample_order, varlen
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
        """Batched, with no loop over samples or images: each input position gets its length in the output (1 for
        a text token, ``T_k`` for the marker of the k-th image in row-major order, 0 for padding), whose cumulative
        sum along the row is where it starts there; the text embeddings and the image-feature rows are then copied
        to those places of one flat ``[B·T, H]`` buffer (whose backward hands each its own gradient)."""
        embed = self.llm.get_input_embeddings()
        dev = input_ids.device
        is_marker = input_ids == IMAGE_TOKEN_INDEX
        n_markers = int(is_marker.sum())
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if image_grids is not None and pixel_values is not None:
            n_images = image_grids.shape[0]  # HD: pixel_values holds several views per image
        if n_markers != n_images:
            raise ValueError(f"the batch has {n_markers} <image> markers but {n_images} images")
        valid = attention_mask.bool()  # padding may be on either side: only real positions count
        text, marker = valid & ~is_marker, valid & is_marker
        n_used = int(marker.sum())  # n_images, unless a marker sits in padding (it then consumes no image)

        # The features of the images used as one [sum_k T_k, H] tensor, and their token counts (HD: variable).
        feats, img_len = None, torch.zeros(0, dtype=torch.long, device=dev)
        if n_images:
            feats = self.image_features(pixel_values, image_grids)
            if isinstance(feats, torch.Tensor):  # [n_images, T, H]
                img_len = torch.full((n_used,), feats.shape[1], dtype=torch.long, device=dev)
                feats = feats[:n_used].reshape(-1, feats.shape[-1])
            else:  # HD: a list of [T_k, H]
                img_len = torch.tensor([f.shape[0] for f in feats[:n_used]], dtype=torch.long, device=dev)
                feats = torch.cat(feats[:n_used]) if n_used else None

        # The layout. Boolean-mask assignment is row-major, so the k-th marker gets the k-th image's length.
        size = text.long()
        size[marker] = img_len
        start = size.cumsum(1) - size  # the output column where each position's token(s) begin
        row_len = size.sum(1)
        n_truncated = int((row_len > self.max_length).sum())
        out_len = row_len.clamp(max=self.max_length)  # truncated after the splice
        B, T = input_ids.shape[0], int(out_len.max())
        shift = T - out_len if padding_side != "right" else torch.zeros_like(out_len)  # generation pads left
        row_base = torch.arange(B, device=dev) * T + shift  # flat index of each row's column 0

        # Text: only the tokens kept are looked up (in one call, as the embeddings' FSDP unit expects).
        keep_text = text & (start < self.max_length)
        text_dst = (row_base[:, None] + start)[keep_text]
        text_embeds = embed(input_ids[keep_text])
        out_e = text_embeds.new_zeros(B * T, text_embeds.shape[-1])
        out_e.index_copy_(0, text_dst, text_embeds)

        if n_used:
            # Feature row r is token r - first[k] of image k = tok_img[r]: its column is that image's marker
            # column plus that offset, in the marker's row; tokens from max_length on are dropped.
            n_tok = feats.shape[0]
            tok_img = torch.repeat_interleave(torch.arange(n_used, device=dev), img_len, output_size=n_tok)
            r = torch.arange(n_tok, device=dev)
            k_col = start[marker] - (img_len.cumsum(0) - img_len)  # column of feature row r is k_col[k] + r
            col = k_col[tok_img] + r
            img_dst = (row_base[marker.nonzero()[:, 0]] + k_col)[tok_img] + r
            src = feats.to(text_embeds.dtype)
            keep = col < self.max_length
            if not bool(keep.all()):
                img_dst, src = img_dst[keep], src[keep]
            out_e.index_copy_(0, img_dst, src)
        out_e = out_e.view(B, T, out_e.shape[-1])

        if not n_images and self.training and any(p.requires_grad for p in self.connector.parameters()):
            # A text-only batch: keep the connector in the graph with a zero contribution (LLaVA's [0:0] slice),
            # so DDP / ZeRO see a gradient (of zeros) for every trainable parameter.
            probe = next(self.connector.parameters())
            dummy = self.connector(torch.zeros(1, 1, self.vision.hidden_size, dtype=probe.dtype, device=dev))
            zero = 0.0 * dummy.sum()
            if self.hd is not None and self.hd_active and self.hd.row_end.requires_grad:
                zero = zero + 0.0 * self.hd.row_end.sum()
            out_e[0] += zero

        out_l = None
        if labels is not None:  # image positions (and padding) keep IGNORE_INDEX
            out_l = input_ids.new_full((B * T,), IGNORE_INDEX)
            out_l[text_dst] = labels[keep_text].to(out_l.dtype)
            out_l = out_l.view(B, T)
        pos = torch.arange(T, device=dev) - shift[:, None]  # 0..n-1 over each row's real tokens
        real = (pos >= 0) & (pos < out_len[:, None])
        return Spliced(out_e, real.to(attention_mask.dtype), pos.masked_fill(~real, 0), out_l, n_truncated)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grids: torch.Tensor | None = None,
                logits: str = "all", packed: bool = False) -> LlavaOutput:
        """The spliced forward pass and the loss: the mean cross-entropy over the micro-batch's target tokens
        (LLaVA / HF).

        ``logits="all"`` returns the logits of every position (``[B, T, vocab]``); ``logits="labelled"`` (training)
        runs the LM head only where a label is — image tokens, the system prompt, questions and padding teach
        nothing, and their logits are most of a stage-2 batch's memory (16 × 2048 × 32K fp32 ≈ 4 GB) — and returns
        those rows only (``[n_target_tokens, vocab]``). ``packed=True`` runs the LLM padding-free: the micro-batch's
        samples share rows (one row under varlen FlashAttention-2, rows as wide as the longest sample under SDPA /
        eager) with per-sample position ids and no attention mask, from which transformers builds attention that
        never crosses samples.
        Both give the padded path's loss and gradients (tests/models/test_fast_paths.py)."""
        if logits not in ("all", "labelled"):
            raise ValueError(f"logits must be 'all' or 'labelled', got {logits!r}")
        s = self.splice(input_ids, attention_mask, labels, pixel_values, "right", image_grids)
        keep = s.attention_mask.bool()
        if packed:  # rows of whole samples; a sample's first token is no target of the one before (lmm.models.packing)
            layout = row_layout(keep.sum(1), one_row=varlen(self.llm))
            rows, pos, seq_labels, dest = pack(layout, keep, s.inputs_embeds, s.position_ids, s.labels, IGNORE_INDEX)
            kwargs = dict(inputs_embeds=rows, attention_mask=None, position_ids=pos)
        else:
            kwargs = dict(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, position_ids=s.position_ids)
            seq_labels = s.labels
        shift_labels = seq_labels[:, 1:] if seq_labels is not None else None
        if logits == "labelled" and shift_labels is not None:
            hidden = self.llm.get_decoder()(**kwargs, use_cache=False).last_hidden_state
            where = shift_labels != IGNORE_INDEX
            hidden, targets = hidden[:, :-1][where], shift_labels[where]
            if packed:  # back to the samples' order, as the padded path returns them
                order = sample_order(dest, where, layout.width)
                hidden, targets = hidden[order], targets[order]
            out_logits = self.llm.get_output_embeddings()(hidden)
            scored = out_logits
        else:
            out_logits = self.llm(**kwargs, use_cache=False).logits
            scored, targets = out_logits[:, :-1], shift_labels
            if packed:  # back to the padded layout callers expect (zeros at padding)
                padded = out_logits.new_zeros(*keep.shape, out_logits.shape[-1])
                padded[keep] = out_logits.flatten(0, 1)[dest]
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
