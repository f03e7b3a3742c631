"""Export our model folders as llava-hf folders and import llava-hf folders (``python -m lmm.interop``).

**Export** (:func:`export_llava_hf`) writes what ``LlavaForConditionalGeneration.from_pretrained`` and
``AutoProcessor.from_pretrained`` load (CLIP-family tower, ``mlp2x_gelu`` connector, causal-LM LLM; LoRA folders
are merged first; HD models are refused — llava-hf has no equivalent):

* ``config.json`` (``LlavaConfig``), ``generation_config.json``, weights (``model*.safetensors``, sharded with
  an index above ``max_shard_size``) in the transformers 5 names, in the stored dtype unless told otherwise.
* The tokenizer gains an ``<image>`` token when it has none, at id ``len(tokenizer)`` (32000 for Vicuna, as the
  llava-hf-1.5 checkpoints); the embeddings and the output head grow to the next multiple of 64 (32064), the new
  rows being the mean of the old ones — a head row equal to the mean gives a logit equal to the mean logit, never
  above the best one, so greedy decoding never picks a new token. The first ``V`` logits equal ours.
* A ``LlavaProcessor`` with the tokenizer, a chat template rendering our conversation template (vicuna_v1) and an
  image processor. Aspect handling: LLaVA-1.5 pads images to a square (mean colour) before resizing; the
  ``CLIPImageProcessor`` of the llava-hf checkpoints instead resizes the short side and centre-crops, which cuts
  the sides of non-square images. For a model trained with ``pad`` we write a ``LlavaImageProcessor`` with
  ``do_pad=True`` (same padding as ours; transformers ≥ 4.46 / 5.x); ``image_processor="clip"`` writes the
  ``CLIPImageProcessor`` (crop) instead, as the official llava-hf folders. transformers 5 picks its torchvision
  backend by default (bicubic differs from PIL by ~1e-2 in normalised pixels); ``backend="pil"`` reproduces our
  pixels exactly.

**Import** (:func:`import_llava_hf`) turns such a folder (transformers 4.x or 5.x names, e.g.
``llava-hf/llava-1.5-7b-hf``) into our model folder: ``lmm_model.yaml`` describing the tower and LLM by their full
configs, ``tokenizer/`` (with its ``<image>`` / ``<pad>`` tokens; our pipeline marks images with -200 and never uses
them), and ``model.safetensors`` in the source dtype. Import → export is lossless (bit-identical state dicts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from lmm.interop.llava_hf import (
    feature_select_strategy,
    from_llava_hf_state_dict,
    llava_hf_config,
    to_llava_hf_state_dict,
)
from lmm.models.vision import HF_VISION_TYPES
from lmm.text.templates import IMAGE_TOKEN, Template, get_template
from lmm.text.tokenizer import keep_legacy_flag, save_tokenizer

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DROP_CONFIG_KEYS = {"transformers_version", "model_type", "architectures", "_name_or_path", "dtype", "torch_dtype"}


def chat_template(template: Template) -> str:
    """A Jinja chat template that renders OpenAI-style messages exactly as our ``two``-style template (vicuna_v1):
    a system message replaces the default system prompt; images come first in a user turn, one ``<image>\\n`` each."""
    if template.style != "two":
        raise ValueError(f"chat template export supports 'two'-style templates (vicuna_v1), not {template.name!r}")
    q = lambda s: json.dumps(s)  # noqa: E731 - a JSON string literal is a valid Jinja string literal
    user, assistant = template.roles
    text = ("{%- if m['content'] is string -%}{%- set text = m['content'] -%}{%- else -%}"
            "{%- set text = (" + q(IMAGE_TOKEN + "\n") + " * (m['content'] | selectattr('type', 'equalto', 'image')"
            " | list | length)) + (m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
            " | join(" + q("\n") + ")) -%}{%- endif -%}")
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set m = messages[0] -%}" + text
        + "{%- set system = text -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}{%- set system = " + q(template.system) + " -%}{%- set turns = messages -%}{%- endif -%}"
        "{{- system + " + q(template.sep) + " -}}"
        "{%- for m in turns -%}" + text
        + "{%- if m['role'] == 'user' -%}{{- " + q(user + ": ") + " + text + " + q(template.sep) + " -}}"
        "{%- elif m['role'] == 'assistant' -%}{{- " + q(assistant + ": ") + " + text + " + q(template.sep2)
        + " -}}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + q(assistant + ":") + " -}}{%- endif -%}"
    )


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The floating dtype of a model folder's stored weights (float32 when there is no plain weights file)."""
    from safetensors import safe_open

    for name in ("model.safetensors", "base.safetensors"):
        path = model_dir / name
        if path.exists():
            with safe_open(str(path), "pt") as f:
                for k in f.keys():
                    t = f.get_slice(k).get_dtype()
                    if t in ("F32", "F16", "BF16"):
                        return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[t]
    return torch.float32


def add_image_token(tokenizer) -> int:
    """Add ``<image>`` as a special token when missing; returns its id."""
    from transformers import AddedToken

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if rows <= weight.shape[0]:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)])


def _image_processor(kind: str, model, aspect: str):
    from transformers import CLIPImageProcessor, LlavaImageProcessor

    if kind == "auto":
        kind = "pad" if aspect == "pad" else "clip"
    size = model.vision.image_size
    kwargs = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
                  image_mean=list(model.vision.image_mean), image_std=list(model.vision.image_std),
                  do_center_crop=True, do_convert_rgb=True)
    if kind == "pad":
        return LlavaImageProcessor(do_pad=True, **kwargs)
    if kind == "clip":
        return CLIPImageProcessor(**kwargs)
    raise ValueError(f"image_processor must be auto, pad or clip, got {kind!r}")


def _write_weights(state: dict[str, torch.Tensor], out: Path, max_shard_size: str) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].contiguous() for n in names}, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def export_llava_hf(model_dir: str | Path, out_dir: str | Path, dtype: str = "auto", image_processor: str = "auto",
                    max_shard_size: str = "5GB", overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Our model folder (plain or LoRA) → a llava-hf folder; see the module docstring. ``out_dir`` is written
    whole or not at all (:func:`lmm.models.checkpoint.output_folder`): never the model folder itself, a non-empty
    one only with ``overwrite``. ``trust_remote_code`` is the user's, never the model folder's."""
    from lmm.models.checkpoint import output_folder

    target = None if dtype == "auto" else _DTYPES.get(dtype)
    if dtype != "auto" and target is None:
        raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {dtype!r}")
    with output_folder(out_dir, (model_dir,), overwrite) as tmp:
        _export(Path(model_dir), tmp, target, image_processor, max_shard_size, trust_remote_code)
    return Path(out_dir)


def _export(model_dir: Path, out: Path, target: torch.dtype | None, image_processor: str, max_shard_size: str,
            trust_remote_code: bool) -> None:
    from transformers import GenerationConfig, LlavaProcessor

    from lmm.models.checkpoint import load_model_dir

    model, tok, spec = load_model_dir(model_dir, trust_remote_code=trust_remote_code)
    target = target or stored_dtype(model_dir)
    state = to_llava_hf_state_dict(model)  # raises for HD, non-CLIP-family towers, other connectors
    image_id = add_image_token(tok)
    vocab = model.llm.config.vocab_size
    new_vocab = vocab if image_id < vocab else -(-(image_id + 1) // 64) * 64
    cfg = llava_hf_config(model, image_id)
    tied = bool(cfg.tie_word_embeddings)
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        state[key] = _grow_rows(state[key], new_vocab)
    if tied:
        del state["lm_head.weight"]  # transformers ties it to the embeddings on load
    cfg.text_config.vocab_size = new_vocab
    cfg.text_config.pad_token_id = tok.pad_token_id
    cfg.dtype = target
    _write_weights({k: v.detach().to(target).cpu() for k, v in state.items()}, out, max_shard_size)
    cfg.save_pretrained(str(out))
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(str(out))
    template = chat_template(get_template(spec.get("template") or "vicuna_v1"))
    tok.padding_side = "left"  # batched generation
    tok.chat_template = template  # the tokenizer's too: lmms-eval's llava_hf and vLLM read it from there
    processor = LlavaProcessor(
        image_processor=_image_processor(image_processor, model, spec.get("image_aspect_ratio", "pad")),
        tokenizer=tok, patch_size=model.vision.image_size // int(model.vision.num_patches ** 0.5),
        vision_feature_select_strategy=feature_select_strategy(model.vision),
        num_additional_image_tokens=model.vision.num_prefix_tokens, chat_template=template,
    )
    processor.save_pretrained(str(out))
    processor.image_processor.save_pretrained(str(out))  # preprocessor_config.json too, for transformers 4.x readers
    keep_legacy_flag(tok, out)


def read_llava_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{hf_dir} has no model.safetensors(.index.json); convert .bin weights first")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(hf_dir / name)))
    return state


def _config_dict(cfg) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_diff_dict().items() if k not in _DROP_CONFIG_KEYS}


def llava_hf_spec(cfg, image_mean, image_std, max_length: int) -> dict[str, Any]:
    """The ``model`` block of ``lmm_model.yaml`` for a ``LlavaConfig``."""
    vtype = HF_VISION_TYPES.get(cfg.vision_config.model_type)
    if vtype is None:
        raise ValueError(f"unsupported llava-hf vision tower {cfg.vision_config.model_type!r}; "
                         f"supported: {sorted(HF_VISION_TYPES)}")
    if cfg.projector_hidden_act != "gelu" or not cfg.multimodal_projector_bias:
        raise ValueError("only the mlp2x_gelu projector (gelu, with biases) is supported")
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError(f"vision_feature_layer must be one layer, got {cfg.vision_feature_layer}")
    prefix = 1 if vtype == "clip" else 0
    if cfg.vision_feature_select_strategy == "default":
        if prefix != 1:
            raise ValueError("'default' feature selection drops a CLS token this tower does not have")
        select = "patch"
    else:
        select = "cls_patch" if prefix else "patch"
    return {
        "vision": {"kind": "hf", "model_type": vtype, "config": _config_dict(cfg.vision_config),
                   "select_layer": cfg.vision_feature_layer, "select_feature": select,
                   "image_mean": [float(x) for x in image_mean], "image_std": [float(x) for x in image_std]},
        "connector": {"name": "mlp2x_gelu"},
        "llm": {"model_type": cfg.text_config.model_type, "config": _config_dict(cfg.text_config),
                "vocab_from_config": True},
        "max_length": max_length, "twin": False,
    }


def import_llava_hf(hf_dir: str | Path, out_dir: str | Path, max_length: int = 2048,
                    image_aspect_ratio: str = "pad", template: str = "vicuna_v1", overwrite: bool = False) -> Path:
    """A llava-hf folder → our model folder (see the module docstring). ``image_aspect_ratio`` is what our
    evaluation uses for it: LLaVA-1.5 checkpoints were trained with ``pad``, whatever their processor does.
    ``out_dir`` is written whole or not at all, never over ``hf_dir``, over a non-empty folder only with
    ``overwrite``. Nothing of ``hf_dir`` runs: its configs, processor and tokenizer load with
    ``trust_remote_code=False`` (llava-hf needs no custom code)."""
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaConfig

    from lmm.models.build import build_llava
    from lmm.models.checkpoint import SPEC_FILE, output_folder

    hf_dir = Path(hf_dir)
    get_template(template)  # validates the name
    with output_folder(out_dir, (hf_dir,), overwrite) as out:
        cfg = LlavaConfig.from_pretrained(str(hf_dir), trust_remote_code=False)
        proc = AutoImageProcessor.from_pretrained(str(hf_dir), trust_remote_code=False)
        m = llava_hf_spec(cfg, proc.image_mean, proc.image_std, max_length)
        raw = read_llava_hf_weights(hf_dir)
        state = from_llava_hf_state_dict(raw, bool(cfg.tie_word_embeddings))
        with torch.device("meta"):  # check names and shapes against the model we will build, without allocating it
            ref = build_llava(m["vision"], m["connector"], m["llm"], max_length).state_dict()
        bad = {k for k in set(ref) | set(state) if k not in ref or k not in state or ref[k].shape != state[k].shape}
        if bad:
            raise ValueError(f"{hf_dir} does not match the model its config describes: {sorted(bad)[:8]}")
        dtypes = {str(v.dtype).removeprefix("torch.") for v in raw.values() if v.is_floating_point()}
        tok = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False)
        save_tokenizer(tok, out / "tokenizer")
        seen, tensors = set(), {}
        for k, v in state.items():  # tied weights share storage; safetensors refuses that
            tensors[k] = v.clone() if v.data_ptr() in seen else v.contiguous()
            seen.add(v.data_ptr())
        save_file(tensors, str(out / "model.safetensors"))
        spec = {"model": m, "template": template, "image_aspect_ratio": image_aspect_ratio, "max_length": max_length,
                "imported_from": str(hf_dir.resolve()),
                "llava_hf": {"image_token_id": cfg.image_token_id, "dtypes": sorted(dtypes)}}
        (out / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    return Path(out_dir)
