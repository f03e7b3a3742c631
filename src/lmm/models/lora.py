"""LoRA fine-tuning through peft, as LLaVA's ``finetune_lora.sh`` (spec §4).

* Adapters (r 128, α 256, dropout 0.05, no bias) on every ``nn.Linear`` of the LLM except its output head —
  for Llama q/k/v/o/gate/up/down; the tower and the connector get none. Only the adapters train in the LLM; the
  connector (and an HD model's row-end token) stay fully trainable (``training/stages.py``: connector at
  ``connector_lr``, the rest at ``lr``).
* A LoRA model folder (written and read by :mod:`lmm.models.checkpoint`) holds the adapter and the other trainable weights explicitly, chosen by module, not by
  parameter names: ``adapter/`` (peft ``save_pretrained``), ``non_lora_trainables.safetensors`` (the connector and
  ``hd`` modules' state), and ``base.safetensors`` (the frozen tower and base LLM) when the base cannot be rebuilt
  from checkpoints (tiny twins, imported models), besides ``lmm_model.yaml`` and ``tokenizer/``.
* :func:`merge_lora` folds the adapters into full weights (peft ``merge_and_unload``);
  ``python -m lmm.models.checkpoint merge SRC DST`` writes a LoRA folder as an ordinary model folder.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lmm.models.llava import LlavaModel

DEFAULT_LORA = {"r": 128, "alpha": 256, "dropout": 0.05}
ADAPTER_DIR = "adapter"
NON_LORA_FILE = "non_lora_trainables.safetensors"
BASE_FILE = "base.safetensors"
NON_LORA_MODULES = ("connector", "hd")  # what trains besides the adapters (hd only in HD models)


@contextmanager
def _quiet_peft():
    """peft calls transformers' deprecated ``is_gradient_checkpointing``: hide that FutureWarning only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_lora(model: LlavaModel) -> bool:
    if "peft" not in sys.modules:  # nothing can be a PeftModel before peft is imported
        return False
    from peft import PeftModel

    return isinstance(model.llm, PeftModel)


def lora_target_modules(llm: nn.Module) -> list[str]:
    """Names (last component) of every ``nn.Linear`` in the LLM except the output head (LLaVA's
    ``find_all_linear_names``); it is an error when the head shares its name with a targeted layer."""
    head = llm.get_output_embeddings()
    names, head_names = set(), set()
    for name, module in llm.named_modules():
        if isinstance(module, nn.Linear):
            (head_names if module is head else names).add(name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("the LLM has no nn.Linear layers for LoRA")
    if names & head_names:
        raise ValueError(f"the output head's name {sorted(head_names)} is also a layer name; cannot exclude it")
    return sorted(names)


def adapter_parameters(model: LlavaModel) -> list[nn.Parameter]:
    """The LoRA A / B matrices of every adapted layer (found by module type, not by name)."""
    from peft.tuners.lora import LoraLayer

    params = []
    for module in model.llm.modules():
        if isinstance(module, LoraLayer):
            params += list(module.lora_A.parameters()) + list(module.lora_B.parameters())
    return params


def add_lora(model: LlavaModel, r: int = 128, alpha: float = 256, dropout: float = 0.05) -> LlavaModel:
    """Wrap ``model.llm`` with LoRA adapters (once) and make the adapters its only trainable weights."""
    from peft import LoraConfig, get_peft_model

    if is_lora(model):
        cfg = model.llm.peft_config["default"]
        if (cfg.r, cfg.lora_alpha, cfg.lora_dropout) != (r, alpha, dropout):
            raise ValueError(f"the LLM already has LoRA r={cfg.r} alpha={cfg.lora_alpha} dropout={cfg.lora_dropout},"
                             f" not r={r} alpha={alpha} dropout={dropout}")
    else:
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                         target_modules=lora_target_modules(model.llm))
        with _quiet_peft():
            model.llm = get_peft_model(model.llm, cfg)
    model.llm.requires_grad_(False)
    for p in adapter_parameters(model):
        p.requires_grad_(True)
    return model


def merge_lora(model: LlavaModel) -> LlavaModel:
    """Fold the adapters into the LLM's weights (``merge_and_unload``); ``model.llm`` is a plain causal LM again."""
    if not is_lora(model):
        raise ValueError("the model has no LoRA adapters to merge")
    model.llm = model.llm.merge_and_unload()
    return model


def non_lora_trainables(model: LlavaModel) -> dict[str, torch.Tensor]:
    """The state of the modules that train besides the adapters, under their ``LlavaModel`` names."""
    out = {}
    for name in NON_LORA_MODULES:
        module = getattr(model, name, None)
        if module is not None:
            out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return out


def base_state_dict(model: LlavaModel) -> dict[str, torch.Tensor]:
    """The frozen tower and the LLM without adapters, under the names of the plain (un-adapted) model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {f"vision.{k}": v for k, v in model.vision.state_dict().items()}

    def walk(module: nn.Module, prefix: str) -> None:
        if isinstance(module, BaseTunerLayer):
            out.update({prefix + k: v for k, v in module.get_base_layer().state_dict().items()})
            return
        out.update({prefix + k: p.detach() for k, p in module.named_parameters(recurse=False)})
        skip = module._non_persistent_buffers_set
        out.update({prefix + k: b for k, b in module.named_buffers(recurse=False) if k not in skip})
        for name, child in module.named_children():
            walk(child, f"{prefix}{name}.")

    walk(model.llm.get_base_model(), "llm.")
    return out


def base_is_rebuildable(spec: dict[str, Any]) -> bool:
    """True when ``lmm_model.yaml`` rebuilds the frozen base from checkpoints (no ``base.safetensors`` needed)."""
    m = spec.get("model", {})
    vision, llm = m.get("vision", {}), m.get("llm", {})
    return (not m.get("twin") and bool(vision.get("name_or_path") or vision.get("checkpoint_path"))
            and bool(llm.get("name_or_path")))
