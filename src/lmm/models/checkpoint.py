"""A self-describing model folder: ``lmm_model.yaml`` (how to rebuild it), ``tokenizer/``, ``model.safetensors``.

``eval.py`` loads what ``train.py`` saved, for any backbone: the model is rebuilt from its config (tiny twins
randomly, real backbones with ``from_pretrained``) and then takes the saved weights.

A model with LoRA adapters is saved as a LoRA folder instead (``adapter/`` + ``non_lora_trainables.safetensors``;
see :mod:`lmm.models.lora`), which ``load_model_dir`` also reads (merged into full weights by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmm.models.build import build_llava
from lmm.models.llava import LlavaModel


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """``save_pretrained`` that keeps ``legacy=True``: transformers 5 does not save it, yet it decides how text
    after a special token (``</s>`` in multi-turn prompts) is split — a reload would tokenize differently."""
    import json

    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    if getattr(tokenizer, "legacy", None) is True and cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        cfg["legacy"] = True
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return folder


def save_model_dir(model: LlavaModel, tokenizer, spec: dict[str, Any], folder: str | Path) -> Path:
    from safetensors.torch import save_file

    from lmm.models.lora import is_lora, save_lora_dir

    if is_lora(model):
        return save_lora_dir(model, tokenizer, spec, folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, folder / "tokenizer")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Tied weights (e.g. lm_head ↔ embed_tokens) share storage; safetensors refuses shared tensors.
    seen: dict[int, str] = {}
    for k in list(state):
        ptr = state[k].data_ptr()
        if ptr in seen:
            state[k] = state[k].clone()
        seen[ptr] = k
    save_file(state, str(folder / "model.safetensors"))
    (folder / "lmm_model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def load_model_dir(folder: str | Path, device: str = "cpu", merge_lora: bool = True
                   ) -> tuple[LlavaModel, Any, dict]:
    from safetensors.torch import load_file

    from lmm.models.lora import ADAPTER_DIR, load_lora_dir
    from lmm.text.tokenizer import load_tokenizer

    folder = Path(folder)
    if (folder / ADAPTER_DIR).is_dir():
        return load_lora_dir(folder, device, merge=merge_lora)
    if not (folder / "lmm_model.yaml").exists():
        raise FileNotFoundError(f"{folder} is not an lmm model folder (no lmm_model.yaml)")
    spec = yaml.safe_load((folder / "lmm_model.yaml").read_text())
    tok = load_tokenizer(str(folder / "tokenizer"), spec.get("max_length", 2048), padding_side="left")
    m = spec["model"]
    model = build_llava(m["vision"], m["connector"], m["llm"], m.get("max_length", 2048), tok,
                        twin=bool(m.get("twin")), hd=m.get("hd"))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    model.hd_active = model.hd is not None and bool(spec.get("hd_active", True))  # HD off in e.g. an HD run's stage 1
    return model.to(device).eval(), tok, spec
