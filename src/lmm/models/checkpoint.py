"""A self-describing model folder: ``lmm_model.yaml`` (how to rebuild it), ``tokenizer/``, ``model.safetensors``.

``eval.py`` loads what ``train.py`` saved, for any backbone: the model is rebuilt from its config (tiny twins
randomly, real backbones with ``from_pretrained``) and then takes the saved weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmm.models.build import build_llava
from lmm.models.llava import LlavaModel


def save_model_dir(model: LlavaModel, tokenizer, spec: dict[str, Any], folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
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


def load_model_dir(folder: str | Path, device: str = "cpu") -> tuple[LlavaModel, Any, dict]:
    from safetensors.torch import load_file

    from lmm.text.tokenizer import load_tokenizer

    folder = Path(folder)
    if not (folder / "lmm_model.yaml").exists():
        raise FileNotFoundError(f"{folder} is not an lmm model folder (no lmm_model.yaml)")
    spec = yaml.safe_load((folder / "lmm_model.yaml").read_text())
    tok = load_tokenizer(str(folder / "tokenizer"), spec.get("max_length", 2048), padding_side="left")
    m = spec["model"]
    model = build_llava(m["vision"], m["connector"], m["llm"], m.get("max_length", 2048), tok,
                        twin=bool(m.get("twin")))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.to(device).eval(), tok, spec
