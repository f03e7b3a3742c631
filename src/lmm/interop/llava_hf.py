"""Bridge to transformers' ``LlavaForConditionalGeneration`` (the llava-hf layout): the same weights under its names.

Used by the parity test (same weights → same logits) and by export/import of llava-hf folders
(:mod:`lmm.interop.hf_folder`). Name mapping (ours → llava-hf):

* ``vision.model.*`` → ``model.vision_tower.*`` (the transformers vision model, e.g. ``CLIPVisionModel``)
* ``connector.{0,2}.*`` (``mlp2x_gelu``: Linear, GELU, Linear) → ``model.multi_modal_projector.linear_{1,2}.*``
* ``llm.model.*`` → ``model.language_model.*``; ``llm.lm_head.*`` → ``lm_head.*``

Checkpoints written by transformers 4.x (e.g. ``llava-hf/llava-1.5-7b-hf``) use the older names
``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.*``, ``multi_modal_projector.*``;
:func:`normalize_llava_hf_keys` maps them to the current ones, as transformers 5 does when loading.
"""

from __future__ import annotations

import torch

from lmm.models.connectors import TokenwiseConnector
from lmm.models.llava import LlavaModel
from lmm.models.vision import HFVisionTower
from lmm.text.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def to_llava_hf_state_dict(model: LlavaModel) -> dict[str, torch.Tensor]:
    """Our state dict under llava-hf names (CLIP-family tower, ``mlp2x_gelu`` connector, causal-LM LLM)."""
    if getattr(model, "hd", None) is not None:
        raise ValueError("LLaVA-1.5-HD has no llava-hf equivalent (LlavaForConditionalGeneration has no cells / "
                         "row-end token; LlavaNext is the different 'anyres' scheme)")
    from lmm.models.lora import is_lora

    if is_lora(model):
        raise ValueError("the model has unmerged LoRA adapters: merge them first (lmm.models.lora.merge_lora)")
    if not isinstance(model.vision, HFVisionTower):
        raise ValueError("llava-hf export needs a transformers vision tower (CLIP / SigLIP)")
    conn = model.connector
    if not (isinstance(conn, TokenwiseConnector) and len(conn) == 3 and isinstance(conn[1], torch.nn.GELU)):
        raise ValueError("llava-hf has only the 2-layer MLP projector: export needs connector 'mlp2x_gelu'")
    out = {}
    for k, v in model.vision.model.state_dict().items():
        out[f"model.vision_tower.{k}"] = v
    for ours, theirs in (("0", "linear_1"), ("2", "linear_2")):
        for p in ("weight", "bias"):
            out[f"model.multi_modal_projector.{theirs}.{p}"] = conn.state_dict()[f"{ours}.{p}"]
    for k, v in model.llm.state_dict().items():
        if k.startswith("model."):
            out["model.language_model." + k[len("model."):]] = v
        elif k.startswith("lm_head."):
            out[k] = v
        else:
            raise ValueError(f"unexpected LLM parameter {k!r} for the llava-hf layout")
    return out


_LEGACY_PREFIXES = (("language_model.lm_head.", "lm_head."), ("language_model.model.", "model.language_model."),
                    ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."))


def normalize_llava_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """llava-hf state dict keys, transformers 4.x or 5.x layout → the 5.x names."""
    out = {}
    for k, v in state.items():
        for old, new in _LEGACY_PREFIXES:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def from_llava_hf_state_dict(state: dict[str, torch.Tensor], tie_word_embeddings: bool = False
                             ) -> dict[str, torch.Tensor]:
    """A llava-hf state dict (either layout) under our ``LlavaModel`` names (inverse of
    :func:`to_llava_hf_state_dict`)."""
    out = {}
    for k, v in normalize_llava_hf_keys(state).items():
        if k.startswith("model.vision_tower."):
            out["vision.model." + k[len("model.vision_tower."):]] = v
        elif k.startswith("model.multi_modal_projector."):
            layer, _, param = k[len("model.multi_modal_projector."):].partition(".")
            index = {"linear_1": "0", "linear_2": "2"}.get(layer)
            if index is None:
                raise ValueError(f"unexpected projector weight {k!r}: only the 2-layer MLP (mlp2x_gelu) is supported")
            out[f"connector.{index}.{param}"] = v
        elif k.startswith("model.language_model."):
            out["llm.model." + k[len("model.language_model."):]] = v
        elif k.startswith("lm_head."):
            out["llm." + k] = v
        else:
            raise ValueError(f"unexpected llava-hf weight {k!r}")
    if "llm.lm_head.weight" not in out and tie_word_embeddings:
        out["llm.lm_head.weight"] = out["llm.model.embed_tokens.weight"]
    return out


def feature_select_strategy(vision) -> str:
    """llava-hf's ``vision_feature_select_strategy`` for our tower: ``default`` drops exactly one leading token."""
    if vision.select_feature == "cls_patch" or vision.num_prefix_tokens == 0:
        return "full"
    if vision.num_prefix_tokens == 1:
        return "default"
    raise ValueError(f"llava-hf can drop one CLS token only; the tower has {vision.num_prefix_tokens} prefix tokens")


def llava_hf_config(model: LlavaModel, image_token_id: int):
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=model.vision.model.config.to_dict(), text_config=model.llm.config.to_dict(),
        image_token_id=image_token_id, projector_hidden_act="gelu",
        vision_feature_layer=model.vision.select_layer,
        vision_feature_select_strategy=feature_select_strategy(model.vision),
        image_seq_length=model.num_image_tokens, multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(model.llm.config, "tie_word_embeddings", False)),
    )


def build_llava_hf(model: LlavaModel, image_token_id: int | None = None):
    """A ``LlavaForConditionalGeneration`` holding exactly our weights (fp32, same attention implementation)."""
    from transformers import LlavaForConditionalGeneration

    image_token_id = model.llm.config.vocab_size - 1 if image_token_id is None else image_token_id
    cfg = llava_hf_config(model, image_token_id)
    hf = LlavaForConditionalGeneration(cfg)
    hf.load_state_dict(to_llava_hf_state_dict(model), strict=True)
    return hf.to(next(model.llm.parameters()).dtype)


def expand_image_markers(input_ids, attention_mask, labels, num_image_tokens: int, image_token_id: int):
    """Right-padded batch with each ``IMAGE_TOKEN_INDEX`` repeated ``num_image_tokens`` times as ``image_token_id``
    (transformers' input convention)."""
    rows = []
    for i in range(input_ids.shape[0]):
        valid = attention_mask[i].bool()
        ids, lab = input_ids[i][valid].tolist(), (labels[i][valid].tolist() if labels is not None else None)
        new_ids, new_lab = [], []
        for k, t in enumerate(ids):
            if t == IMAGE_TOKEN_INDEX:
                new_ids += [image_token_id] * num_image_tokens
                new_lab += [IGNORE_INDEX] * num_image_tokens
            else:
                if t == image_token_id:
                    raise ValueError(f"text token {t} collides with the image token id")
                new_ids.append(t)
                new_lab.append(lab[k] if lab is not None else IGNORE_INDEX)
        rows.append((new_ids, new_lab))
    T = max(len(r[0]) for r in rows)
    ids_t = torch.zeros(len(rows), T, dtype=torch.long)
    lab_t = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    mask_t = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids_t[i, : len(a)] = torch.tensor(a)
        lab_t[i, : len(b)] = torch.tensor(b)
        mask_t[i, : len(a)] = 1
    return ids_t, mask_t, (lab_t if labels is not None else None)
