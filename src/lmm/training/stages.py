"""Stage rules: which parts train (pretrain: connector; finetune: connector + LLM; vision always frozen), the
optimizer's parameter groups (connector at its own learning rate), and the stage-1 → stage-2 connector hand-off.

A stage with ``lora`` (``{r, alpha, dropout}``, :mod:`lmm.models.lora`) trains the LLM through LoRA adapters only.
An HD model's row-end token (``model.hd``) trains whenever the connector does and HD is active (``model.hd_active``,
off for a stage without HD), at the main learning rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmm.models.llava import LlavaModel

PARTS = ("vision", "connector", "llm")


def apply_stage(model: LlavaModel, trainable: list[str], lora: dict[str, Any] | None = None) -> list[dict]:
    """Freeze everything but ``trainable`` (a subset of connector / llm); return a table of parameter counts.

    With ``lora`` the LLM gets LoRA adapters (once; see :func:`lmm.models.lora.add_lora`) and only they train."""
    unknown = set(trainable) - {"connector", "llm"}
    if unknown:
        raise ValueError(f"unknown trainable parts {sorted(unknown)}; choose from connector, llm (vision is frozen)")
    if lora and "llm" not in trainable:
        raise ValueError("a stage with lora trains the LLM through its adapters: put 'llm' in trainable")
    parts = PARTS + (("hd",) if getattr(model, "hd", None) is not None else ())
    for part in parts:
        on = (part in trainable) if part != "hd" else ("connector" in trainable and model.hd_active)
        getattr(model, part).requires_grad_(on and not (part == "llm" and lora))
    if lora:
        from lmm.models.lora import add_lora

        add_lora(model, **lora)
    rows = []
    for part in parts:
        module: nn.Module = getattr(model, part)
        on = (part in trainable) if part != "hd" else ("connector" in trainable and model.hd_active)
        total = sum(p.numel() for p in module.parameters())
        train = sum(p.numel() for p in module.parameters() if p.requires_grad)
        rows.append({"module": part, "trainable": train, "total": total, "frozen": not on})
    return rows


def format_param_table(rows: list[dict]) -> str:
    lines = [f"{'module':<10} {'trainable':>14} {'total':>14}"]
    for r in rows:
        lines.append(f"{r['module']:<10} {r['trainable']:>14,} {r['total']:>14,}")
    return "\n".join(lines)


def param_groups(model: LlavaModel, lr: float, connector_lr: float | None, weight_decay: float = 0.0) -> list[dict]:
    """LLaVA's ``create_optimizer``: trainable params only; the connector gets ``connector_lr`` when set."""
    conn = [p for p in model.connector.parameters() if p.requires_grad]
    conn_ids = {id(p) for p in conn}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in conn_ids]
    groups = []
    if rest:
        groups.append({"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "llm"})
    if conn:
        groups.append({"params": conn, "lr": connector_lr or lr, "weight_decay": weight_decay, "name": "connector"})
    return groups


def save_connector(model: LlavaModel, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.connector.state_dict().items()}, str(path))
    return path


def load_connector(model: LlavaModel, path: str | Path) -> None:
    """Load connector weights: our safetensors file, or LLaVA's ``mm_projector.bin`` (``*mm_projector.`` prefix
    stripped, strict), as ``--pretrain_mm_mlp_adapter``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if any("mm_projector." in k for k in state):
        state = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
    model.connector.load_state_dict(state, strict=True)
