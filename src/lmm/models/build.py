"""Compose a :class:`LlavaModel` from the three config groups (vision, connector, llm)."""

from __future__ import annotations

from typing import Any

from lmm.models.connectors import build_connector
from lmm.models.hd import build_hd
from lmm.models.llava import LlavaModel
from lmm.models.llm import build_llm
from lmm.models.vision import build_vision_tower


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


TWIN_KEYS = ("pretrain", "checkpoint")  # a twin block's keys that are not model config (lmm.training.twin_tower)


def as_twin(part: dict, what: str) -> dict:
    """The tiny twin of a real backbone config: its ``twin`` block replaces the checkpoint. A twin block with a
    ``checkpoint`` (a pretrained twin's folder, see :mod:`lmm.training.twin_tower`) is loaded from there."""
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
