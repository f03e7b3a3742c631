"""Model folders: what ``train.py`` saves and ``eval.py`` loads, for any backbone.

An ordinary folder holds ``lmm_model.yaml`` (how to rebuild the model), ``tokenizer/`` and ``model.safetensors``:
the model is rebuilt from its config (tiny twins randomly, real backbones with ``from_pretrained``) and then takes
the saved weights. A model with LoRA adapters is saved as a LoRA folder (:mod:`lmm.models.lora`): ``adapter/``,
``non_lora_trainables.safetensors`` and, when the base cannot be rebuilt from checkpoints, ``base.safetensors``;
:func:`load_model_dir` reads both kinds (a LoRA folder merged into full weights by default).

``python -m lmm.models.checkpoint merge SRC DST`` writes a LoRA folder as an ordinary folder (adapters merged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from lmm.models import lora
from lmm.models.build import build_llava
from lmm.models.llava import LlavaModel
from lmm.models.lora import (
    ADAPTER_DIR,
    BASE_FILE,
    NON_LORA_FILE,
    _quiet_peft,
    base_is_rebuildable,
    base_state_dict,
    is_lora,
    non_lora_trainables,
)
from lmm.text.tokenizer import load_tokenizer, save_tokenizer

SPEC_FILE = "lmm_model.yaml"


def save_tensors(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """``state`` as safetensors; tied weights (e.g. ``lm_head`` ↔ ``embed_tokens``) share storage, which
    safetensors refuses, so a second name of the same storage gets a copy."""
    from safetensors.torch import save_file

    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().contiguous().cpu()
        out[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    save_file(out, str(path))
    return Path(path)


def save_model_dir(model: LlavaModel, tokenizer, spec: dict[str, Any], folder: str | Path,
                   include_base: bool | None = None) -> Path:
    """Write a model folder: a LoRA folder for a model with adapters (``include_base`` None = when the base cannot
    be rebuilt from checkpoints), else an ordinary one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, folder / "tokenizer")
    if is_lora(model):
        model.llm.save_pretrained(str(folder / ADAPTER_DIR))
        save_tensors(non_lora_trainables(model), folder / NON_LORA_FILE)
        if include_base is None:
            include_base = not base_is_rebuildable(spec)
        if include_base:
            save_tensors(base_state_dict(model), folder / BASE_FILE)
        cfg = model.llm.peft_config["default"]
        spec = {**spec, "lora": {"r": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                                 "adapter": ADAPTER_DIR, "non_lora_trainables": NON_LORA_FILE,
                                 "base": BASE_FILE if include_base else None}}
    else:
        save_tensors(model.state_dict(), folder / "model.safetensors")
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def load_model_dir(folder: str | Path, device: str = "cpu", merge_lora: bool = True
                   ) -> tuple[LlavaModel, Any, dict]:
    """Rebuild a model folder's model (in eval mode on ``device``), its tokenizer (left padding) and its spec. A
    LoRA folder: base (checkpoints or ``base.safetensors``) + non-LoRA trainables + adapter, merged into full
    weights unless ``merge_lora`` is False (then the adapters stay trainable)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / SPEC_FILE).exists():
        raise FileNotFoundError(f"{folder} is not an lmm model folder (no {SPEC_FILE})")
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    tok = load_tokenizer(str(folder / "tokenizer"), spec.get("max_length", 2048), padding_side="left")
    m = spec["model"]
    model = build_llava(m["vision"], m["connector"], m["llm"], m.get("max_length", 2048), tok,
                        twin=bool(m.get("twin")), hd=m.get("hd"))
    info = spec.get("lora")
    if info is None and (folder / ADAPTER_DIR).is_dir():
        raise ValueError(f"{folder} has {ADAPTER_DIR}/ but its {SPEC_FILE} has no lora block")
    if info is None:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    else:
        _load_lora_parts(model, folder, info, spec, trainable=not merge_lora)
        if merge_lora:
            lora.merge_lora(model)
    model.hd_active = model.hd is not None and bool(spec.get("hd_active", True))  # HD off in e.g. an HD run's stage 1
    return model.to(device).eval(), tok, spec


def _load_lora_parts(model: LlavaModel, folder: Path, info: dict, spec: dict, trainable: bool) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter = folder / info.get("adapter", ADAPTER_DIR)
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder} is not a LoRA model folder (no {adapter.name}/adapter_config.json)")
    state = load_file(str(folder / info.get("non_lora_trainables", NON_LORA_FILE)))
    expected = set(non_lora_trainables(model))
    if set(state) != expected:
        raise ValueError(f"{NON_LORA_FILE} holds {sorted(set(state) ^ expected)[:5]}… that do not match the model")
    if info.get("base"):
        state.update(load_file(str(folder / info["base"])))
        model.load_state_dict(state, strict=True)
    else:
        if not base_is_rebuildable(spec):
            raise ValueError(f"{folder} has no {BASE_FILE} and its config does not name the base checkpoints")
        model.load_state_dict(state, strict=False)  # exactly the non-LoRA trainables (checked above)
    with _quiet_peft():
        model.llm = PeftModel.from_pretrained(model.llm, str(adapter), is_trainable=trainable)


def merge_lora_dir(src: str | Path, dst: str | Path) -> Path:
    """LoRA model folder → ordinary model folder with the adapters merged into full weights."""
    model, tok, spec = load_model_dir(src, merge_lora=True)
    spec = {k: v for k, v in spec.items() if k != "lora"}
    spec["merged_from"] = str(Path(src).resolve())
    return save_model_dir(model, tok, spec, dst)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmm.models.checkpoint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    merge = sub.add_parser("merge", help="merge a LoRA model folder into full weights")
    merge.add_argument("src", help="LoRA model folder (adapter/ + non_lora_trainables.safetensors)")
    merge.add_argument("dst", help="output model folder")
    args = parser.parse_args(argv)
    print(merge_lora_dir(args.src, args.dst))


if __name__ == "__main__":
    main()
