"""Every input a training run will read, checked before any model is built, and the config mistakes found first.

:func:`check_config` (no file is touched): a ``???`` value left in the config, a stage of ``run_stages`` that the
config does not define, a stage's data config that cannot be read (an unknown key, an unknown source name — the
error names the known ones, :func:`lmm.data.sources.known_sources`).

:func:`run_inputs` lists what a run reads, per stage of ``run_stages``: the vision tower, the LLM and its tokenizer
(a local folder, or a hub id — with ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` a hub id counts only when
the Hugging Face cache holds it; looked up with ``huggingface_hub.try_to_load_from_cache``, never a network call),
``init_connector`` files, a ``resume=`` checkpoint, the stage's data (converted shards: a folder with its
``manifest.jsonl``, or a URL, syntax-checked and never fetched; else the JSON, the image folder and, for the
sources the stage includes, the image sub-folders its source rules name, e.g. ``ocr_vqa/``) and the benchmarks
scored after training. :func:`missing_inputs` stats each one (:func:`lmm.training.input_checks.problem`:
existence and readability; a 665K-sample JSON is not parsed), in well under a second at paper scale, and says for
each missing one what provides it: the ``hf download`` line, or the step of docs/data.md §0 (LLaVA's README
"Train"). :func:`check_inputs` raises them all at once as one
:class:`MissingInputsError`.

At ``scale=tiny`` the twins (data, tokenizer, pretrained twin towers) are written by
:func:`lmm.synth.world.prepare_training` first; ``prepared=False`` (the plan, which writes nothing) leaves them
out. LoRA adapters, the Q-Former and HD read no file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lmm.common import plain
from lmm.data.mixture import mixture_from_cfg
from lmm.data.sources import UnknownSourceError, parse_rules
from lmm.training.input_checks import Input, InputError, Missing, MissingInputsError, problem

DATA_DOC = "docs/data.md §0"
# LLaVA's annotation files on the hub (README "Train"), by file name: what `hf download` fetches them from.
LLAVA_FILES = {"blip_laion_cc_sbu_558k.json": "liuhaotian/LLaVA-Pretrain",
               "llava_v1_5_mix665k.json": "liuhaotian/LLaVA-Instruct-150K"}
# The image folders of the 665K mixture (the source rules' image prefixes) and where their images come from.
IMAGE_DOWNLOADS = {
    "coco/": "COCO train2017 (http://images.cocodataset.org/zips/train2017.zip) unzipped into coco/train2017",
    "gqa/": "GQA (https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip) unzipped into gqa/images",
    "ocr_vqa/": "OCR-VQA's images from LLaVA's download script (README 'Visual Instruction Tuning'), every file "
                "saved as .jpg, into ocr_vqa/images",
    "textvqa/": "TextVQA (https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip) unzipped into "
                "textvqa/train_images",
    "vg/": "Visual Genome (https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip and images2.zip) unzipped into "
           "vg/VG_100K and vg/VG_100K_2",
}
PROJECTOR = "liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5"  # MODEL_ZOO: stage 1's mm_projector.bin


# ---------------------------------------------------------------------------------------------------- the config


def unset_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys whose value is ``???`` (OmegaConf's missing value), without resolving any interpolation (a plan's
    ``${hydra:...}`` may not resolve outside a Hydra app)."""
    if isinstance(node, DictConfig):
        keys = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return []
    out = []
    for key in keys:
        full = f"{prefix}.{key}" if prefix and isinstance(key, str) else f"{prefix}[{key}]" if prefix else str(key)
        if OmegaConf.is_missing(node, key):
            out.append(full)
        else:
            out += unset_keys(node._get_node(key), full)
    return out


def check_config(cfg: DictConfig, resolve: bool = False) -> None:
    """The config mistakes that need no file: ``???`` values, unknown stages, unreadable stage data configs (an
    unknown source name is an :class:`~lmm.data.sources.UnknownSourceError`); with ``resolve``, an interpolation
    that cannot be resolved (omegaconf's ``InterpolationResolutionError``, naming the key)."""
    unset = unset_keys(cfg)
    if unset:
        raise InputError(f"{', '.join(unset)}: a value is required (??? in the config) — set it on the command "
                         f"line, e.g. {unset[0]}=<value>")
    if resolve:
        OmegaConf.to_container(cfg, resolve=True)
    stages = list(cfg.get("stages") or {})
    for name in cfg.run_stages:
        if name not in stages:
            raise InputError(f"run_stages: unknown stage {name!r} — the stages: {', '.join(stages)}")
        if name not in (cfg.get("data") or {}):
            raise InputError(f"data.{name}: the data config has no stage {name!r} — choose a data config that has "
                             f"(data=llava_mix665k) or add data.{name}")
        try:
            mixture_from_cfg(cfg.data[name], where=f"data.{name}")
        except UnknownSourceError:
            raise
        except ValueError as e:
            raise InputError(f"data.{name}: {e}") from None


# ---------------------------------------------------------------------------------------------------- the inputs


def run_inputs(cfg: DictConfig, prepared: bool = True) -> list[Input]:
    """Every input the run reads (module docstring); ``prepared=False`` leaves out what ``prepare_training`` writes
    at ``scale=tiny`` (the twins)."""
    out = model_inputs(cfg, prepared)
    for name in cfg.run_stages:
        stage = cfg.stages[name]
        if stage.get("init_connector"):
            out.append(Input(f"stages.{name}.init_connector", str(stage.init_connector), "file",
                             f"stage 1's connector file (<run>/pretrain/connector.safetensors) or LLaVA's "
                             f"mm_projector.bin (hf download {PROJECTOR}, MODEL_ZOO)"))
        twin = bool(((cfg.data.get("twin") or {}).get("enabled")))
        if prepared or not twin:
            out += data_inputs(plain(cfg.data[name]), f"data.{name}")
    resume = cfg.get("resume")
    if resume and str(resume) != "auto":
        out.append(Input("resume", str(resume), "path", "a checkpoint of this run (<run>/<stage>/checkpoints/"
                                                        "step-<N>.ckpt), or resume=auto: the newest one"))
    return _unique(out + eval_inputs(cfg, prepared))


def model_inputs(cfg: DictConfig, prepared: bool = True) -> list[Input]:
    """The backbones' weights and the tokenizer (at ``scale=tiny``: the prepared tokenizer and pretrained twins)."""
    model, out = cfg.model, []
    vision, llm = plain(model.vision), plain(model.llm)
    if model.get("twin"):
        if not prepared:
            return []
        for part, conf in (("vision", vision), ("llm", llm)):
            folder = (conf.get("twin") or {}).get("checkpoint")
            if folder:
                out.append(Input(f"model.{part}.twin.checkpoint", str(folder), "model", _PREPARE, ("config.json",)))
        return out + [Input("model.llm.tokenizer", str(llm.get("tokenizer") or ""), "model", _PREPARE,
                            ("tokenizer_config.json",))]
    if vision.get("kind", "hf") == "timm":
        out.append(_timm_input(vision))
    else:
        out.append(_model_input("model.vision.name_or_path", vision.get("name_or_path"), ("config.json",),
                                "the tower"))
    tokenizer = llm.get("tokenizer")
    out.append(_model_input("model.llm.name_or_path", llm.get("name_or_path"),
                            ("config.json",) if tokenizer else ("config.json", "tokenizer_config.json"), "the LLM"))
    if tokenizer:
        out.append(_model_input("model.llm.tokenizer", tokenizer, ("tokenizer_config.json",), "the tokenizer"))
    return out


_PREPARE = "written by lmm.synth.world.prepare_training, which train.py runs first"


def _model_input(key: str, value: Any, files: tuple[str, ...], what: str) -> Input:
    if not value:
        return Input(key, "", "required", f"set {key} to a folder or a hub id ({what} would start from random "
                                          f"weights at scale=paper)")
    value = str(value)
    local = value.startswith(("/", ".", "~")) or value.count("/") > 1
    fix = (f"a folder with {', '.join(files)} and the weights, e.g. hf download <hub id> --local-dir {value}" if local
           else f"hf download {value} (into the Hugging Face cache), or {key}=<a local folder>")
    return Input(key, value, "model", fix, files)


def _timm_input(vision: dict) -> Input:
    name = vision.get("timm_name")
    if vision.get("checkpoint_path"):
        return Input("model.vision.checkpoint_path", str(vision["checkpoint_path"]), "file",
                     f"the open_clip / timm weights file of {name}")
    hub = f"timm/{name}"
    if vision.get("name_or_path"):
        return Input("model.vision.name_or_path", hub, "timm", f"hf download {hub}", ("config.json",))
    return Input("model.vision.checkpoint_path", "", "required",
                 f"set it to the weights file of {name} (hf download {hub}), or model.vision.name_or_path=timm "
                 f"to load timm's own: a timm tower at scale=paper would start from random weights")


def data_inputs(node: dict, where: str) -> list[Input]:
    """A stage's data: converted shards (folder or URL), or the JSON, its image folder and the image sub-folders
    of the sources it includes."""
    shards, out = node.get("shards"), []
    json_path = node.get("json")
    if shards:
        fix = (f"convert the stage's data into it: make shards JSON={json_path} IMAGES={node.get('image_folder')} "
               f"OUT={shards} (docs/data.md §1), or {where}.shards=null to convert the JSON on first use")
        return [Input(f"{where}.shards", str(shards), "shards", fix)]
    if json_path:
        name, parent = Path(str(json_path)).name, Path(str(json_path)).parent
        repo = LLAVA_FILES.get(name)
        fix = (f"hf download {repo} {name} --repo-type dataset --local-dir {parent} ({DATA_DOC})" if repo
               else f"the stage's LLaVA-format JSON ({DATA_DOC})")
        out.append(Input(f"{where}.json", str(json_path), "file", fix))
    folder = node.get("image_folder")
    if not folder:
        return out
    lcs = Path(str(json_path or "")).name == "blip_laion_cc_sbu_558k.json"
    fix = (f"hf download liuhaotian/LLaVA-Pretrain images.zip --repo-type dataset --local-dir {Path(folder).parent}, "
           f"then unzip it into {folder} ({DATA_DOC})" if lcs else f"the images, laid out as LLaVA's README 'Train' "
                                                                   f"({DATA_DOC})")
    out.append(Input(f"{where}.image_folder", str(folder), "folder", fix))
    for prefix, sources in _image_prefixes(node).items():
        leave_out = (f"{where}.sources.{sources[0]}.include=false" if len(sources) == 1 else
                     f"{where}.sources.<source>.include=false for each of {', '.join(sources)}")
        how = IMAGE_DOWNLOADS.get(prefix, "its images")
        out.append(Input(f"{where}.image_folder", os.path.join(str(folder), prefix.rstrip("/")), "folder",
                         f"{how} ({DATA_DOC}), or leave the source out: {leave_out}",
                         what=f"the images of {', '.join(sources)}"))
    return out


def _image_prefixes(node: dict) -> dict[str, list[str]]:
    """Image sub-folder (a source rule's ``image_prefix``) → the included sources whose rules name it."""
    specs, default = node.get("sources") or {}, bool(node.get("default_include", True))
    out: dict[str, list[str]] = {}
    for rule in parse_rules(node.get("rules", "llava_mix665k")):
        spec = specs.get(rule.source) or {}
        included = spec.get("include", True) if rule.source in specs else default
        if not rule.image_prefix or not included or spec.get("subsample") == 0:
            continue
        for prefix in rule.image_prefix[:1]:  # alternatives: the first names the folder
            if rule.source not in out.setdefault(prefix, []):
                out[prefix].append(rule.source)
    return out


def benchmark_root(ev: Any) -> Input | None:
    """The benchmarks' folder (``eval.data_root``) of an evaluation config, unless its synthetic twins are written
    there first (``synthetic_benchmarks``) or no benchmark is asked for."""
    if not ev or not ev.get("benchmarks") or ev.get("synthetic_benchmarks"):
        return None
    return Input("eval.data_root", str(ev.data_root), "folder",
                 "LLaVA's eval.zip unpacked there with each benchmark's images (docs/evaluation.md, File layout)")


def eval_inputs(cfg: DictConfig, prepared: bool = True) -> list[Input]:
    """The benchmarks' folder scored after training (and during stage 2), unless it is the synthetic twins'."""
    ev, out = cfg.get("eval") or {}, []
    root = benchmark_root(ev)
    if ev.get("after_training") and root is not None:
        out.append(Input(root.key, root.value, root.kind, f"{root.fix}, or eval.after_training=false to train "
                                                          f"without the evaluation"))
    during = ev.get("during_training") or {}
    if during.get("enabled") and "finetune" in cfg.run_stages and (prepared or not ev.get("synthetic_benchmarks")):
        key = "eval.during_training.data_root" if during.get("data_root") else "eval.data_root"
        out.append(Input(key, str(during.get("data_root") or ev.data_root), "folder",
                         "the benchmarks' files (docs/evaluation.md), or eval.during_training.enabled=false"))
    return out


def _unique(inputs: list[Input]) -> list[Input]:
    seen, out = set(), []
    for inp in inputs:
        if (inp.key, inp.value) not in seen:
            seen.add((inp.key, inp.value))
            out.append(inp)
    return out


def missing_inputs(cfg: DictConfig, prepared: bool = True) -> list[Missing]:
    """The inputs of :func:`run_inputs` that cannot be read, each with its problem and fix. An image sub-folder is
    looked at only when its image folder is there (a missing image folder is one line, not six)."""
    out: list[Missing] = []
    for inp in run_inputs(cfg, prepared):
        if inp.what and any(m.input.key == inp.key and not m.input.what for m in out):
            continue
        why = problem(inp)
        if why:
            out.append(Missing(inp, why))
    return out


def check_inputs(cfg: DictConfig, prepared: bool = True) -> None:
    """:class:`MissingInputsError` naming every missing input of the run at once (``prepared=False``: those
    ``prepare_training`` does not write)."""
    missing = missing_inputs(cfg, prepared)
    if missing:
        raise MissingInputsError(missing)
