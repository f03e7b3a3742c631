"""Frozen vision towers: transformers vision models (CLIP, SigLIP, any model returning hidden states) and timm ViTs.

``select_layer`` indexes the hidden states as LLaVA does (-2 = the penultimate layer's output, before any final
norm); ``select_feature`` is ``patch`` (CLS and other prefix tokens dropped) or ``cls_patch`` (kept). A tower is
built either ``from_pretrained(name_or_path)`` or as a random twin from a small config, with no download.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmm.imaging import CLIP_MEAN, CLIP_STD


class VisionTower(nn.Module):
    """Base: ``forward(pixel_values [N,3,S,S]) -> features [N, num_patches (+prefix), hidden_size]``, frozen."""

    hidden_size: int
    image_size: int
    num_patches: int
    num_prefix_tokens: int
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __init__(self, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        self.select_layer, self.select_feature = select_layer, select_feature

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (self.num_prefix_tokens if self.select_feature == "cls_patch" else 0)

    def freeze(self) -> "VisionTower":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "VisionTower":
        return super().train(False)  # always frozen, always in eval mode (no dropout)

    def _select(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.select_feature == "cls_patch" else hidden[:, self.num_prefix_tokens:]


class HFVisionTower(VisionTower):
    def __init__(self, model: nn.Module, select_layer: int = -2, select_feature: str = "patch",
                 image_mean=CLIP_MEAN, image_std=CLIP_STD):
        super().__init__(select_layer, select_feature)
        self.model = model
        cfg = model.config
        self.hidden_size = cfg.hidden_size
        self.image_size = cfg.image_size
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        # Tokens before the patches (CLIP's CLS; SigLIP has none) = position embeddings - patches.
        emb = getattr(getattr(model, "vision_model", model), "embeddings", None)
        pos = getattr(getattr(emb, "position_embedding", None), "num_embeddings", self.num_patches + 1)
        self.num_prefix_tokens = pos - self.num_patches
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.freeze()

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        return self._select(out.hidden_states[self.select_layer])


class TimmVisionTower(VisionTower):
    def __init__(self, model: nn.Module, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__(select_layer, select_feature)
        self.model = model
        self.hidden_size = model.embed_dim
        self.image_size = model.patch_embed.img_size[0]
        self.num_patches = model.patch_embed.num_patches
        self.num_prefix_tokens = model.num_prefix_tokens
        depth = len(model.blocks)
        # hidden_states[k] (HF convention) is the output of block k-1; -1 is the last block.
        self.block_index = depth + select_layer if select_layer < 0 else select_layer - 1
        if not 0 <= self.block_index < depth:
            raise ValueError(f"select_layer {select_layer} is outside a {depth}-block timm model")
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.image_mean = tuple(cfg.get("mean", CLIP_MEAN))
        self.image_std = tuple(cfg.get("std", CLIP_STD))
        self.freeze()

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model.forward_intermediates(
            pixel_values.to(dtype), indices=[self.block_index], output_fmt="NLC", intermediates_only=True,
            return_prefix_tokens=True,
        )[0]
        patches, prefix = out
        if self.select_feature == "cls_patch":
            return torch.cat([prefix, patches], dim=1)
        return patches


# The transformers vision families a tower may be: a config's ``model_type`` (the tower's own or its parent
# model's) → our family name → its transformers model and config classes.
HF_VISION_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}
_HF_VISION_CLASSES = {"clip": ("CLIPVisionModel", "CLIPVisionConfig"),
                      "siglip": ("SiglipVisionModel", "SiglipVisionConfig")}


def _hf_vision_class(model_type: str):
    import transformers

    family = HF_VISION_TYPES.get(model_type)
    return getattr(transformers, _HF_VISION_CLASSES[family][0]) if family else transformers.AutoModel


def build_vision_tower(kind: str = "hf", name_or_path: str | None = None, config: dict[str, Any] | None = None,
                       select_layer: int = -2, select_feature: str = "patch", model_type: str = "clip",
                       timm_name: str | None = None, checkpoint_path: str | None = None,
                       image_mean=None, image_std=None, trust_remote_code: bool = False, **_: Any) -> VisionTower:
    """Build a frozen tower. ``kind``: ``hf`` (transformers) or ``timm``. With ``name_or_path`` / ``checkpoint_path``
    the real weights are loaded; otherwise ``config`` describes a random twin. ``trust_remote_code`` goes to every
    transformers ``from_pretrained`` as an explicit bool (never transformers' interactive prompt); timm runs no
    checkpoint code (its weights load with ``weights_only``)."""
    if kind == "hf":
        import transformers

        if name_or_path:
            trust = {"trust_remote_code": bool(trust_remote_code)}
            cfg = transformers.AutoConfig.from_pretrained(name_or_path, **trust)
            cls = _hf_vision_class(cfg.model_type)
            model = cls.from_pretrained(name_or_path, **trust)
            model_type = HF_VISION_TYPES.get(cfg.model_type, cfg.model_type)
            try:
                proc = transformers.AutoImageProcessor.from_pretrained(name_or_path, **trust)
                image_mean, image_std = image_mean or proc.image_mean, image_std or proc.image_std
            except (OSError, ValueError):
                pass
        else:
            if model_type not in _HF_VISION_CLASSES:
                raise ValueError(f"unknown tiny vision model_type {model_type!r}; known: {sorted(_HF_VISION_CLASSES)}")
            vcfg = getattr(transformers, _HF_VISION_CLASSES[model_type][1])(**(config or {}))
            model = _hf_vision_class(model_type)(vcfg)
        mean = image_mean or (CLIP_MEAN if model_type == "clip" else (0.5, 0.5, 0.5))
        std = image_std or (CLIP_STD if model_type == "clip" else (0.5, 0.5, 0.5))
        return HFVisionTower(model, select_layer, select_feature, mean, std)
    if kind == "timm":
        import timm

        if not timm_name:
            raise ValueError("a timm tower needs 'timm_name' (e.g. vit_large_patch14_clip_336.openai)")
        kwargs = dict(config or {})
        pretrained = bool(name_or_path or checkpoint_path)
        if checkpoint_path:
            kwargs["pretrained_cfg_overlay"] = {"file": checkpoint_path}
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
        return TimmVisionTower(model, select_layer, select_feature)
    raise ValueError(f"unknown vision tower kind {kind!r}; known: ['hf', 'timm']")
