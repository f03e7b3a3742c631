"""Compose a :class:`LlavaModel` from the three config groups (vision, connector, llm)."""

from __future__ import annotations

from typing import Any

from lmm.common import plain
from lmm.models.connectors import build_connector
from lmm.models.hd import build_hd
from lmm.models.llava import LlavaModel
from lmm.models.llm import build_llm
from lmm.models.vision import build_vision_tower


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
                twin: bool = False, hd: Any = None) -> LlavaModel:
    """``vision`` / ``connector`` / ``llm`` are the config dicts of the groups ``model/{vision,connector,llm}``.

    With ``twin`` every part is built as its tiny random twin (``scale=tiny``). A random LLM takes its vocabulary
    size and special ids from ``tokenizer``, unless its config says ``vocab_from_config: true`` (a complete saved
    config, e.g. an imported llava-hf model whose embeddings are padded beyond the tokenizer). ``hd`` is
    ``model.hd`` (``{enabled, max_cells, global_context}``, LLaVA-1.5-HD; see :mod:`lmm.models.hd`)."""
    vision, connector, llm, hd = _plain(vision), _plain(connector), _plain(llm), _plain(hd)
    if twin:
        vision, llm = as_twin(vision, "vision"), as_twin(llm, "llm")
        connector = {**connector, **(connector.get("twin") or {})}
    tower = build_vision_tower(**vision)
    if not llm.get("name_or_path") and tokenizer is not None and not llm.get("vocab_from_config"):
        cfg = dict(llm.get("config") or {})
        cfg.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        llm = {**llm, "config": cfg}
    lm = build_llm(**llm)
    conn_kwargs = {k: v for k, v in connector.items() if k not in ("name", "twin")}
    conn = build_connector(connector["name"], tower.hidden_size, lm.config.hidden_size, **conn_kwargs)
    return LlavaModel(tower, conn, lm, max_length=max_length, hd=build_hd(tower, conn, lm.config.hidden_size, hd))


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
    import torch

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
