"""The synthetic world made real before a run starts.

With ``model.twin`` (``scale=tiny``) the backbones are tiny twins: the tiny tokenizer is trained on the twin world's
text, and a twin block with ``pretrain`` is trained once (:mod:`lmm.synth.twin_tower`, :mod:`lmm.synth.twin_llm`).
With ``data.twin.enabled`` the training data are a synthetic twin written under ``data.root``; with
``eval.synthetic_benchmarks`` the benchmarks are written under ``eval.data_root``. Everything lands in the cache
once (hash-keyed, atomic) and its path goes into the config — ``model.llm.tokenizer``, ``model.<part>.twin.checkpoint``
— so training and evaluation read files exactly as at paper scale and never import this package.

Seeds: the data twin (``data.twin.seed``) and the benchmark twins (``eval.synthetic_benchmarks.seed``) follow the
run's ``seed`` (``training_seed_offset`` changes the training draw, not the world), each in a folder that names its
seed and size, so runs of several seeds share a cache side by side; the pretrained backbone twins keep their own
``pretrain.seed`` (0): they are the released backbones every run starts from. One seed gives the same bytes in any
fresh cache (tests/synth/test_determinism.py).

Processes of one run (every rank of ``torchrun``) prepare under one file lock: the first writes, the others find.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from lmm.common import file_lock, plain


def world_lock(cache_dir: str | Path):
    """An exclusive lock on ``cache_dir/.world.lock`` (released when the process ends, even by a crash)."""
    return file_lock(Path(cache_dir) / ".world.lock")


def twin_spec(data_cfg) -> dict | None:
    """``write_twin``'s argument for a data config whose ``twin.enabled`` is set (``root`` + the writer's
    parameters), or None for real data."""
    twin = dict(data_cfg.get("twin") or {})
    if not twin.pop("enabled", False):
        return None
    return {"root": data_cfg["root"], **twin}


def prepare_training(cfg: DictConfig) -> DictConfig:
    """Write / train what ``cfg`` needs of the synthetic world and put the paths into ``cfg`` (in place)."""
    from lmm.synth import write_twin

    with world_lock(cfg.paths.cache_dir):
        spec = twin_spec(plain(cfg.data))
        if spec:
            write_twin(spec)
        if cfg.model.twin:
            from lmm.synth.twin_llm import pretrain_twin_llm
            from lmm.synth.twin_tower import pretrain_twin_tower

            tokenizer, cache = _tokenizer(cfg), cfg.paths.cache_dir
            _pretrained_twin(cfg, "vision", lambda v: pretrain_twin_tower(v, cache))
            _pretrained_twin(cfg, "llm", lambda m: pretrain_twin_llm(
                m, tokenizer, m.get("chat_template") or "vicuna_v1", cache))
        during = (cfg.get("eval") or {}).get("during_training") or {}
        if during.get("enabled") and "finetune" in cfg.run_stages:
            _benchmarks(cfg.eval, list(during.benchmarks))
    return cfg


def prepare_eval(eval_cfg: DictConfig) -> DictConfig:
    """Write the synthetic benchmarks an ``evaluation`` config node asks for (``synthetic_benchmarks``)."""
    _benchmarks(eval_cfg, list(eval_cfg.benchmarks))
    return eval_cfg


def _benchmarks(eval_cfg, names: list[str]) -> None:
    """The synthetic benchmarks ``names`` under ``eval_cfg.data_root``: ``synthetic_benchmarks.n_images`` images each,
    or ``per_benchmark.<name>`` where given (the Table-2 study sizes each benchmark to ≈ 1,000 questions)."""
    synth = eval_cfg.get("synthetic_benchmarks")
    if synth:
        from lmm.synth.benchmarks import write_synthetic_benchmarks

        sizes = dict(synth.get("per_benchmark") or {})
        for n_images in dict.fromkeys(sizes.get(name, synth.n_images) for name in names):
            write_synthetic_benchmarks(eval_cfg.data_root, n_images, synth.image_size, seed=synth.get("seed", 0),
                                       names=[n for n in names if sizes.get(n, synth.n_images) == n_images])


def _tokenizer(cfg: DictConfig):
    """The tiny Llama-style tokenizer of the twin world (trained once per cache); its folder becomes
    ``model.llm.tokenizer``."""
    from lmm.synth import tokenizer_corpus
    from lmm.text.tokenizer import train_tiny_tokenizer

    tok, folder = train_tiny_tokenizer(tokenizer_corpus(), cfg.model.llm.get("tiny_vocab_size") or 1000,
                                       Path(cfg.paths.cache_dir), cfg.model.max_length)
    with open_dict(cfg):
        cfg.model.llm.tokenizer = str(folder)
    return tok


def _pretrained_twin(cfg: DictConfig, part: str, pretrain) -> None:
    """A twin block with ``pretrain`` and no ``checkpoint`` gets the folder ``pretrain(part_dict)`` trains once."""
    conf = plain(cfg.model[part])
    twin = conf.get("twin") or {}
    if twin.get("pretrain") is not None and not twin.get("checkpoint"):
        with open_dict(cfg):
            cfg.model[part].twin.checkpoint = str(pretrain(conf))
