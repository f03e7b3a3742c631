"""Compose a :class:`LlavaModel` from the three config groups (vision, connector, llm)."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch

from lmm.common import plain
from lmm.models.connectors import build_connector
from lmm.models.hd import build_hd
from lmm.models.llava import LlavaModel
from lmm.models.llm import build_llm
from lmm.models.vision import HF_VISION_TYPES, build_vision_tower

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> dict:
    return dict(plain(cfg) or {})


TWIN_KEYS = ("pretrain", "checkpoint")  # a twin block's keys that are not model config (lmm.synth.twin_tower)


def as_twin(part: dict, what: str) -> dict:
    """The tiny twin of a real backbone config: its ``twin`` block replaces the checkpoint. A twin block with a
    ``checkpoint`` (a pretrained twin's folder, see :mod:`lmm.synth.twin_tower`) is loaded from there."""
    twin = part.get("twin")
    if twin is None:
        if part.get("name_or_path") or part.get("checkpoint_path"):
            raise ValueError(f"the {what} config names a checkpoint but has no 'twin' block for scale=tiny")
        return part
    if twin.get("checkpoint"):
        return {**part, "name_or_path": str(twin["checkpoint"]), "checkpoint_path": None, "tokenizer": None,
                "dtype": None, "config": None}
    return random_twin_config(part)


def random_twin_config(part: dict) -> dict:
    """``part`` as its random twin (the ``twin`` block, less its non-config keys, is the model config)."""
    config = {k: v for k, v in part["twin"].items() if k not in TWIN_KEYS}
    return {**part, "name_or_path": None, "checkpoint_path": None, "tokenizer": None, "dtype": None,
            "config": config}


def build_llava(vision: Any, connector: Any, llm: Any, max_length: int = 2048, tokenizer=None,
                twin: bool = False, hd: Any = None, meta: bool = False) -> LlavaModel:
    """``vision`` / ``connector`` / ``llm`` are the config dicts of the groups ``model/{vision,connector,llm}``.

    With ``twin`` every part is built as its tiny random twin (``scale=tiny``). A random LLM takes its vocabulary
    size and special ids from ``tokenizer``, unless its config says ``vocab_from_config: true`` (a complete saved
    config, e.g. an imported llava-hf model whose embeddings are padded beyond the tokenizer). ``hd`` is
    ``model.hd`` (``{enabled, max_cells, global_context}``, LLaVA-1.5-HD; see :mod:`lmm.models.hd`).

    With ``meta`` the same model on the meta device — names, shapes, dtypes and the tower's image statistics as the
    load would give them — from the checkpoints' configs alone, no weight read (:func:`skeleton`): what a rank
    builds that receives rank 0's weights once sharded. A part that cannot be built so (remote code, a tower
    family lmm does not know) makes the whole model load as usual, with a warning."""
    vision, connector, llm, hd = _plain(vision), _plain(connector), _plain(llm), _plain(hd)
    if twin:
        vision, llm = as_twin(vision, "vision"), as_twin(llm, "llm")
        connector = {**connector, **(connector.get("twin") or {})}
    if meta:
        try:
            vision, llm = skeleton(vision, "vision"), skeleton(llm, "llm")
        except NoSkeleton as e:
            log.warning("the model is loaded whole on this rank too: %s", e)
            meta = False
    with torch.device("meta") if meta else nullcontext():
        tower = build_vision_tower(**vision)
        if not llm.get("name_or_path") and tokenizer is not None and not llm.get("vocab_from_config"):
            cfg = dict(llm.get("config") or {})
            cfg.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            llm = {**llm, "config": cfg}
        lm = build_llm(**llm)
        conn_kwargs = {k: v for k, v in connector.items() if k not in ("name", "twin")}
        conn = build_connector(connector["name"], tower.hidden_size, lm.config.hidden_size, **conn_kwargs)
        return LlavaModel(tower, conn, lm, max_length=max_length,
                          hd=build_hd(tower, conn, lm.config.hidden_size, hd))


class NoSkeleton(ValueError):
    """A part that cannot be built from its config alone exactly as its checkpoint loads."""


def skeleton(part: dict, what: str) -> dict:
    """``part`` (a ``model/vision`` or ``model/llm`` dict) as the random model its checkpoint loads into: the
    checkpoint's own config (``AutoConfig``; a CLIP / SigLIP folder's vision config), the dtype ``from_pretrained``
    gives (the part's ``dtype``, else torch's default), the tower's image mean / std from its image processor, the
    LLM's vocabulary from its config; a timm tower without its pretrained file. A part without a checkpoint is
    returned as it is."""
    if not part.get("name_or_path") and not part.get("checkpoint_path"):
        return part
    if part.get("trust_remote_code"):
        raise NoSkeleton(f"the {what} runs remote code (trust_remote_code)")
    if part.get("kind", "hf") == "timm":
        return {**part, "name_or_path": None, "checkpoint_path": None}
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(part["name_or_path"])
    if what == "llm":
        dtype = str(part.get("dtype") or torch.get_default_dtype()).removeprefix("torch.")
        config = {**{k: v for k, v in cfg.to_dict().items() if k != "model_type"}, "dtype": dtype}
        return {**part, "name_or_path": None, "checkpoint_path": None, "config": config,
                "model_type": cfg.model_type, "vocab_from_config": True}
    family = HF_VISION_TYPES.get(cfg.model_type)
    if family is None:
        raise NoSkeleton(f"the vision tower's model_type {cfg.model_type!r} is not one lmm builds from a config")
    config = {k: v for k, v in getattr(cfg, "vision_config", cfg).to_dict().items() if k != "model_type"}
    mean, std = part.get("image_mean"), part.get("image_std")
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(part["name_or_path"])
        mean, std = mean or proc.image_mean, std or proc.image_std
    except (OSError, ValueError):
        pass
    # from_pretrained loads a tower in torch's default dtype (build_vision_tower passes none), as the constructor
    return {**part, "name_or_path": None, "checkpoint_path": None, "config": config, "model_type": family,
            "image_mean": mean, "image_std": std}


def arch_config(part: dict, what: str) -> dict:
    """``part`` (a ``model/vision`` or ``model/llm`` dict) as a random model of the checkpoint's real shape: its
    ``arch`` block (the checkpoint's public config.json values; for a timm tower, ``create_model`` kwargs) becomes
    the model config and the checkpoint is dropped, so nothing is downloaded."""
    arch = part.get("arch")
    if arch is None:
        raise ValueError(f"the {what} config has no 'arch' block (the checkpoint's shape), needed to build it at real "
                         f"size without its weights (name_or_path={part.get('name_or_path')!r})")
    return {**part, "name_or_path": None, "checkpoint_path": None, "tokenizer": None, "config": dict(arch)}


def build_llava_meta(vision: Any, connector: Any, llm: Any, max_length: int = 2048, hd: Any = None,
                     twin: bool = False) -> LlavaModel:
    """The real-size :class:`LlavaModel` on the meta device (shapes and dtypes, no storage): every part is built
    from its ``arch`` block (or, with ``twin``, from its ``twin`` block) inside ``torch.device("meta")``, so even
    Vicuna-13B + CLIP-336 takes about a second and no memory. The LLM gets its config's ``dtype`` (bf16 in the
    paper configs, as ``from_pretrained`` would load it); a tower without ``dtype`` stays fp32, as it loads. What
    trains, and LoRA adapters, are then set with :func:`lmm.training.stages.apply_stage` (also on meta)."""
    vision, connector, llm, hd = _plain(vision), _plain(connector), _plain(llm), _plain(hd)
    if twin:
        vision, llm = random_twin_config(vision), random_twin_config(llm)
        llm["config"] = {"vocab_size": llm.get("tiny_vocab_size") or 1000, **llm["config"]}
        connector = {**connector, **(connector.get("twin") or {})}
    else:
        vision, llm = arch_config(vision, "vision"), arch_config(llm, "llm")
    with torch.device("meta"):
        tower = build_vision_tower(**vision)
        # shapes only: the attention kernel does not matter, and FlashAttention need not be installed to plan
        lm = build_llm(**{**llm, "gradient_checkpointing": False, "attn_implementation": None})
        for part, cfg in ((tower, vision), (lm, llm)):
            if cfg.get("dtype"):
                part.to(getattr(torch, cfg["dtype"]))
        conn_kwargs = {k: v for k, v in connector.items() if k not in ("name", "twin")}
        conn = build_connector(connector["name"], tower.hidden_size, lm.config.hidden_size, **conn_kwargs)
        model = LlavaModel(tower, conn, lm, max_length=max_length,
                           hd=build_hd(tower, conn, lm.config.hidden_size, hd))
    return model
