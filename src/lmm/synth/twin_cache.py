"""What the pretrained twins (:mod:`lmm.synth.twin_tower`, :mod:`lmm.synth.twin_llm`) share: a cache folder per
key, trained once (atomically) with the caller's RNG and thread count left alone, and a plain AdamW loop.

A twin is byte-reproducible on one machine: the same key gives the same safetensors in any fresh cache, whichever
process builds it. Seeding alone is not enough: CPU kernels split their sums by the number of threads, so a twin
trained with 2 threads differs from one trained with 1 (``OMP_NUM_THREADS``; the Table-2 run trains seeds side by
side with fewer threads each, and whichever run comes first builds the twin every later run reads). So every twin
is trained with :data:`BUILD_THREADS` threads, recorded in its key."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmm.common import build_once, digest
from lmm.synth.sources import SYNTH_VERSION

log = logging.getLogger(__name__)
BUILD_THREADS = 1  # intra-op threads a twin trains with, whatever the process has (the same sums on every run)


@contextmanager
def fixed_threads(n: int = BUILD_THREADS) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, the caller's restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cached_twin(cache_dir: str | Path, kind: str, key: dict[str, Any], seed: int,
                train: Callable[[Path, dict[str, Any]], Path]) -> Path:
    """The twin described by ``key`` (plus the synthetic data version: the twins learn from the generators'
    output) in ``cache_dir/kind/<model_type>-<hash>``; if absent, ``train(folder, key)`` writes it (atomically,
    :func:`lmm.common.build_once`), seeded with ``seed`` inside a forked RNG (a run starts alike whether the twin
    was cached or not) and with :data:`BUILD_THREADS` threads (the same bytes whichever process builds it)."""
    key = {**key, "synth": SYNTH_VERSION, "threads": BUILD_THREADS}
    folder = Path(cache_dir) / kind / f"{key['model_type']}-{digest(key)}"

    def build(tmp: Path) -> None:
        with torch.random.fork_rng(devices=[]), fixed_threads():
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
