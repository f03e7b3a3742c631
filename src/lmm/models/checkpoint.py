"""Model folders: what ``train.py`` saves and ``eval.py`` loads, for any backbone.

An ordinary folder holds ``lmm_model.yaml`` (how to rebuild the model), ``tokenizer/`` and ``model.safetensors``:
the model is rebuilt from its config (tiny twins randomly, real backbones with ``from_pretrained``) and then takes
the saved weights. A model with LoRA adapters is saved as a LoRA folder (:mod:`lmm.models.lora`): ``adapter/``,
``non_lora_trainables.safetensors`` and, when the base cannot be rebuilt from checkpoints, ``base.safetensors``;
:func:`load_model_dir` reads both kinds (a LoRA folder merged into full weights by default).

``python -m lmm.models.checkpoint merge SRC DST`` writes a LoRA folder as an ordinary folder (adapters merged).

A model folder is data, never code: a ``trust_remote_code`` anywhere in its ``model`` block is not obeyed (loading
such a folder is refused with :class:`RemoteCodeRefused`), and every ``from_pretrained`` it reaches (LLM, vision
tower, tokenizer) gets the caller's ``trust_remote_code`` — False unless the user passed it on the command line
(:data:`REMOTE_CODE_SWITCHES`). Folders written from another (merge, ``lmm.interop``) go through
:func:`output_folder`: never over their input, never over a non-empty folder unless asked, never half-written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from lmm.common import inside, replacing_folder
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
REMOTE_CODE = "trust_remote_code"
REMOTE_CODE_SWITCHES = ("eval.trust_remote_code=true (eval.py, and train.py's evaluation), --trust-remote-code "
                        "(python -m lmm.interop export, python -m lmm.models.checkpoint merge)")


class RemoteCodeRefused(ValueError):
    """Loading a model folder would run Python code the user did not allow on the command line."""


def remote_code_requests(node: Any, where: str = "model") -> list[str]:
    """The dotted keys of ``node`` (a spec's ``model`` block) that set ``trust_remote_code`` to a true value."""
    if isinstance(node, dict):
        return [f"{where}.{k}" for k, v in node.items() if k == REMOTE_CODE and v] + [
            hit for k, v in node.items() if k != REMOTE_CODE for hit in remote_code_requests(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [hit for i, v in enumerate(node) for hit in remote_code_requests(v, f"{where}.{i}")]
    return []


def _without_remote_code(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_remote_code(v) for k, v in node.items() if k != REMOTE_CODE}
    if isinstance(node, list):
        return [_without_remote_code(v) for v in node]
    return node


class OutputFolderError(ValueError):
    """An output folder that would overwrite its input or a folder that is not empty."""


def _same_or_inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


@contextmanager
def output_folder(dst: str | Path, inputs: tuple[str | Path, ...] = (), overwrite: bool = False) -> Iterator[Path]:
    """A fresh temporary sibling of ``dst`` to write a whole folder into; when the block succeeds it replaces
    ``dst`` by a rename (a failure leaves nothing under ``dst``'s name). Refused (:class:`OutputFolderError`,
    before anything is written): ``dst`` is one of ``inputs`` or holds one of them, ``dst`` exists and is not a
    folder, or ``dst`` is a non-empty folder and ``overwrite`` is False."""
    dst = Path(dst)
    for src in inputs:
        if _same_or_inside(Path(src), dst):
            raise OutputFolderError(f"the output folder {dst} is (or holds) the input {src}: writing it would "
                                    "destroy what is being read; choose another output folder")
    if dst.exists() and not dst.is_dir():
        raise OutputFolderError(f"the output {dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise OutputFolderError(f"the output folder {dst} exists and is not empty; pass --overwrite to replace it")
    with replacing_folder(dst) as tmp:  # --overwrite: the old folder goes once the new one is complete
        yield tmp


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


def load_model_dir(folder: str | Path, device: str = "cpu", merge_lora: bool = True,
                   trust_remote_code: bool = False) -> tuple[LlavaModel, Any, dict]:
    """Rebuild a model folder's model (in eval mode on ``device``), its tokenizer (left padding) and its spec. A
    LoRA folder: base (checkpoints or ``base.safetensors``) + non-LoRA trainables + adapter, merged into full
    weights unless ``merge_lora`` is False (then the adapters stay trainable).

    ``trust_remote_code`` is the caller's (the user's command line), never the folder's: a spec asking for it is
    refused with :class:`RemoteCodeRefused` unless the caller passes True, and every ``from_pretrained`` gets the
    caller's value; a checkpoint that names its own code (``auto_map``) then fails with the switches to pass."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / SPEC_FILE).exists():
        raise FileNotFoundError(f"{folder} is not an lmm model folder (no {SPEC_FILE})")
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    asked = remote_code_requests(spec.get("model") or {})
    if asked and not trust_remote_code:
        raise RemoteCodeRefused(
            f"{folder / SPEC_FILE} sets {', '.join(asked)}: loading it would run Python code shipped with a "
            f"checkpoint. A model folder cannot allow that; remote code runs only when you pass it on the command "
            f"line: {REMOTE_CODE_SWITCHES}")
    m = _without_remote_code(spec["model"])
    trust = {REMOTE_CODE: bool(trust_remote_code)}
    try:
        tok = load_tokenizer(str(folder / "tokenizer"), spec.get("max_length", 2048), padding_side="left",
                             trust_remote_code=bool(trust_remote_code))
        model = build_llava({**m["vision"], **trust}, m["connector"], {**m["llm"], **trust}, m.get("max_length", 2048),
                            tok, twin=bool(m.get("twin")), hd=m.get("hd"))
    except ValueError as e:  # transformers refusing a checkpoint's auto_map: say which switch allows it
        if trust_remote_code or REMOTE_CODE not in str(e):
            raise
        raise RemoteCodeRefused(f"{folder}: a checkpoint it loads holds its own Python code, which runs only when "
                                f"you pass {REMOTE_CODE_SWITCHES}. transformers said: {e}") from e
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

    adapter = inside(folder, info.get("adapter", ADAPTER_DIR))  # names read from the spec stay in the folder
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder} is not a LoRA model folder (no {adapter.name}/adapter_config.json)")
    state = load_file(str(inside(folder, info.get("non_lora_trainables", NON_LORA_FILE))))
    expected = set(non_lora_trainables(model))
    if set(state) != expected:
        raise ValueError(f"{NON_LORA_FILE} holds {sorted(set(state) ^ expected)[:5]}… that do not match the model")
    if info.get("base"):
        state.update(load_file(str(inside(folder, info["base"]))))
        model.load_state_dict(state, strict=True)
    else:
        if not base_is_rebuildable(spec):
            raise ValueError(f"{folder} has no {BASE_FILE} and its config does not name the base checkpoints")
        model.load_state_dict(state, strict=False)  # exactly the non-LoRA trainables (checked above)
    with _quiet_peft():
        model.llm = PeftModel.from_pretrained(model.llm, str(adapter), is_trainable=trainable)


def merge_lora_dir(src: str | Path, dst: str | Path, overwrite: bool = False,
                   trust_remote_code: bool = False) -> Path:
    """LoRA model folder → ordinary model folder with the adapters merged into full weights (written through
    :func:`output_folder`: never over ``src``, over a non-empty ``dst`` only with ``overwrite``)."""
    with output_folder(dst, (src,), overwrite) as tmp:
        model, tok, spec = load_model_dir(src, merge_lora=True, trust_remote_code=trust_remote_code)
        spec = {k: v for k, v in spec.items() if k != "lora"}
        spec["merged_from"] = str(Path(src).resolve())
        save_model_dir(model, tok, spec, tmp)
    return Path(dst)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmm.models.checkpoint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    merge = sub.add_parser("merge", help="merge a LoRA model folder into full weights")
    merge.add_argument("src", help="LoRA model folder (adapter/ + non_lora_trainables.safetensors)")
    merge.add_argument("dst", help="output model folder (refused if it is SRC, or not empty without --overwrite)")
    merge.add_argument("--overwrite", action="store_true", help="replace a non-empty DST (once the merge is done)")
    merge.add_argument("--trust-remote-code", action="store_true",
                       help="allow checkpoints the folder loads to run their own Python code (never from the folder)")
    args = parser.parse_args(argv)
    try:
        print(merge_lora_dir(args.src, args.dst, args.overwrite, args.trust_remote_code))
    except (OutputFolderError, RemoteCodeRefused, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
