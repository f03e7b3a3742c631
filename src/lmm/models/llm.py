"""The language model: any transformers causal LM, from a checkpoint or as a random twin from a small config.

``attn_implementation`` (``model.llm.attn_implementation``) picks transformers' attention kernels: ``null`` (its
default, SDPA), ``sdpa``, ``eager``, ``flex_attention`` or ``flash_attention_2`` (the ``flash-attn`` package, an
optional extra: ``pip install -e '.[flash]'``; CUDA GPUs, fp16 / bf16). With FlashAttention, ``packing: auto``
trains padding-free (varlen kernels). :func:`compile_decoder_layers` is the optional ``torch.compile`` of training
(``stages.<stage>.compile``)."""

from __future__ import annotations

from typing import Any

from torch import nn

# What to install for an attention implementation that transformers cannot import.
FLASH_INSTALL = {"flash_attention_2": "pip install -e '.[flash]' (flash-attn >= 2.6; CUDA GPUs, fp16 / bf16)"}


def build_llm(name_or_path: str | None = None, config: dict[str, Any] | None = None, model_type: str = "llama",
              dtype: str | None = None, attn_implementation: str | None = None,
              gradient_checkpointing: bool = False, trust_remote_code: bool = False, **_: Any) -> nn.Module:
    import torch
    import transformers

    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if name_or_path:
            if dtype:
                kwargs["dtype"] = getattr(torch, dtype)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                name_or_path, trust_remote_code=trust_remote_code, **kwargs)
        else:
            cfg = transformers.AutoConfig.for_model(model_type, **(config or {}))
            model = transformers.AutoModelForCausalLM.from_config(cfg, **kwargs)
    except ImportError as e:
        if not str(attn_implementation or "").startswith("flash_attention"):
            raise
        how = FLASH_INSTALL.get(attn_implementation, f"install the package transformers names below for "
                                                     f"{attn_implementation}")
        raise ImportError(
            f"model.llm.attn_implementation={attn_implementation} needs FlashAttention, which is not installed here: "
            f"{how} — an optional extra that `make setup` does not install. Or choose model.llm.attn_implementation="
            f"sdpa (transformers' default; null) or eager. transformers said: {e}") from e
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


COMPILE_KEYS = ("enabled", "backend", "mode", "dynamic", "fullgraph")


def compile_options(spec: Any) -> dict[str, Any] | None:
    """A stage's ``compile`` block (``{enabled, backend, mode, dynamic, fullgraph}``, or null / false / true) as the
    keyword arguments of :func:`compile_decoder_layers`; None when compiling is off."""
    if spec is None or spec is False:
        return None
    if spec is True:
        spec = {"enabled": True}
    spec = dict(spec)
    unknown = set(spec) - set(COMPILE_KEYS)
    if unknown:
        raise ValueError(f"unknown compile option(s) {sorted(unknown)}; the keys are {', '.join(COMPILE_KEYS)}")
    if not spec.get("enabled", False):
        return None
    return {"backend": spec.get("backend") or "inductor", "mode": spec.get("mode"),
            "dynamic": spec.get("dynamic", True), "fullgraph": bool(spec.get("fullgraph", False))}


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The LLM's transformer blocks (``get_decoder().layers``; through a peft wrapper too)."""
    decoder = llm.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"{type(decoder).__name__} has no `layers` (a ModuleList of transformer blocks) to compile")
    return layers


def compile_decoder_layers(llm: nn.Module, backend: str = "inductor", mode: str | None = None,
                           dynamic: bool | None = True, fullgraph: bool = False) -> int:
    """``torch.compile`` every transformer block of ``llm`` in place (as ``nn.Module.compile``), as torchtitan does:
    blocks are identical, so one compiled graph serves them all; the embeddings, the splice, the LM head and the loss
    stay eager. In place, so parameter names, state dicts and checkpoints are unchanged, and the hooks of FSDP2
    (applied before) and activation checkpointing (around each block) keep working. ``dynamic=True`` compiles for
    any sequence length and batch size at once (training's lengths vary per micro-batch). Compiled in training mode
    only; in eval mode the blocks run eagerly. Returns the number of blocks compiled; :func:`uncompile_decoder_layers`
    undoes it."""
    import torch

    kw: dict[str, Any] = {"backend": backend, "dynamic": dynamic, "fullgraph": fullgraph}
    if mode:
        kw["mode"] = mode
    layers = decoder_layers(llm)
    for layer in layers:
        # nn.Module.compile sets exactly this attribute (torch.compile of the layer's _call_impl); here the compiled
        # call serves training mode only: in eval mode (generation during training: a KV cache, one token at a
        # time, guards on each layer's index) the layer runs eagerly instead of recompiling per layer.
        layer._compiled_call_impl = _when_training(layer, torch.compile(layer._call_impl, **kw))
    return len(layers)


def _when_training(layer: nn.Module, compiled):
    def call(*args, **kwargs):
        return compiled(*args, **kwargs) if layer.training else layer._call_impl(*args, **kwargs)

    return call


def uncompile_decoder_layers(llm: nn.Module) -> int:
    """Undo :func:`compile_decoder_layers` (the blocks run eagerly again); returns how many were compiled."""
    n = 0
    for layer in decoder_layers(llm):
        if getattr(layer, "_compiled_call_impl", None) is not None:  # what nn.Module.compile sets
            layer._compiled_call_impl = None
            n += 1
    return n
