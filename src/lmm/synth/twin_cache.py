"""What the pretrained twins (:mod:`lmm.synth.twin_tower`, :mod:`lmm.synth.twin_llm`) share: a cache folder per
key, trained once (atomically) with the caller's RNG left alone, and a plain AdamW loop."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmm.common import build_once, digest
from lmm.synth.sources import SYNTH_VERSION

log = logging.getLogger(__name__)


def cached_twin(cache_dir: str | Path, kind: str, key: dict[str, Any], seed: int,
                train: Callable[[Path, dict[str, Any]], Path]) -> Path:
    """The twin described by ``key`` (plus the synthetic data version: the twins learn from the generators'
    output) in ``cache_dir/kind/<model_type>-<hash>``; if absent, ``train(folder, key)`` writes it (atomically,
    :func:`lmm.common.build_once`), seeded with ``seed`` inside a forked RNG (a run starts alike whether the twin
    was cached or not)."""
    key = {**key, "synth": SYNTH_VERSION}
    folder = Path(cache_dir) / kind / f"{key['model_type']}-{digest(key)}"

    def build(tmp: Path) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train(tmp, key)

    return build_once(folder, build, "config.json")


def fit(step_loss, params, settings: dict, what: str) -> float:
    """AdamW for ``settings['steps']`` steps on ``step_loss()`` (a fresh batch each call); returns the last loss."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0))
    start, first = time.time(), None
    for _ in tqdm(range(settings["steps"]), desc=f"pretraining the {what} (once, cached)", mininterval=2,
                  unit="step"):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    log.info("pretrained the %s: %d steps, loss %.3f → %.3f, %.0f s", what, settings["steps"], first, loss.item(),
             time.time() - start)
    return loss.item()


def save_twin(model, folder: Path, key: dict[str, Any], final_loss: float) -> Path:
    """``save_pretrained`` into ``folder`` (the cache's temporary folder), with the key and the final loss in
    ``lmm_twin_pretrain.json``."""
    (folder / "lmm_twin_pretrain.json").write_text(json.dumps({**key, "final_loss": final_loss}, indent=1))
    model.eval().save_pretrained(str(folder))
    return folder
