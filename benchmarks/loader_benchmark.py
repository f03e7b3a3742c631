"""Loader throughput: the shard DataModule vs a LLaVA-style lazy loader, on the same synthetic samples, in one run.

Both do the same work per sample — decode the image, pad to square, resize + crop to 336 px, normalise, tokenize the
conversation with the vicuna_v1 template — and collate micro-batches. The lazy loader is LLaVA's
``LazySupervisedDataset`` pattern (``LazyJsonDataset`` below): a JSON list in memory, one ``PIL.Image.open``
per sample from the image folder, a shuffling ``DataLoader``. It is timed with 0 workers (the dataset alone) and with
the same worker count as the DataModule. Each figure is the best of ``--repeats`` full passes (worker start-up
included, shard conversion excluded and reported on its own).

    python benchmarks/loader_benchmark.py [--n 2000] [--size 336] [--workers 2] [--batch 16] [--image-size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def best_rate(make_iter, n_expected: int, repeats: int) -> tuple[float, list[str]]:
    best, ids = 0.0, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = [i for batch in make_iter() for i in batch.ids]
        dt = time.perf_counter() - t0
        if len(ids) != n_expected:
            raise RuntimeError(f"a pass yielded {len(ids)} samples, expected {n_expected}")
        best = max(best, len(ids) / dt)
    return best, ids


class LazyJsonDataset:
    """The baseline: LLaVA's ``LazySupervisedDataset`` (llava/train/train.py) — the JSON list held in memory,
    each item's image opened from the folder when the item is read, then the same sample processor."""

    def __init__(self, json_path, image_folder, processor):
        from lmm.data.records import read_records

        self.records, _ = read_records(json_path)
        self.image_folder, self.processor = Path(image_folder), processor

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from lmm.data.images import load_image

        rec = self.records[i]
        return self.processor(rec, [load_image(self.image_folder / rel) for rel in rec.images], "")


def main(argv: list[str] | None = None) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader

    from lmm.data.batch import collate
    from lmm.data.datamodule import build_datamodule
    from lmm.data.images import ImageTransform
    from lmm.data.processor import SampleProcessor
    from lmm.data.shards import convert
    from lmm.synth import tokenizer_corpus
    from lmm.synth.basic import write_synthetic
    from lmm.text.templates import get_template
    from lmm.text.tokenizer import default_cache_dir, train_tiny_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="samples")
    p.add_argument("--size", type=int, default=336, help="model input size (px)")
    p.add_argument("--image-size", type=int, default=64, help="size of the synthetic source images (px)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--root", default=None, help="work folder (default: a temporary one)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(a.root or tempfile.mkdtemp(prefix="lmm-loader-bench-"))
    data = write_synthetic(root / "syn", n_pretrain=0, n_finetune=a.n, image_size=a.image_size, seed=0)
    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000, default_cache_dir(), 2048)
    proc = SampleProcessor(tok, get_template("vicuna_v1"), ImageTransform(a.size, "pad"))
    t0 = time.perf_counter()
    convert(data["finetune"], data["images"], root / "shards", workers=a.workers, shard_size=500, rules="synthetic",
            echo=lambda s: None)
    convert_s = time.perf_counter() - t0

    cfg = {"num_workers": a.workers, "finetune": {"shards": str(root / "shards"), "rules": "synthetic"}}
    dm = build_datamodule(cfg, "finetune", proc, a.batch, 1, tok.pad_token_id, seed=0)
    dm.setup("fit")
    epoch = iter(range(10**6))

    def shards_pass():
        dm.set_epoch(next(epoch))
        return dm.train_dataloader()

    lazy = LazyJsonDataset(data["finetune"], data["images"], proc)

    def lazy_pass(workers):
        return DataLoader(lazy, batch_size=a.batch, shuffle=True, num_workers=workers,
                          collate_fn=partial(collate, pad_id=tok.pad_token_id, padding_side="right"))

    rates = {}
    rates["shards"], ids_s = best_rate(shards_pass, a.n, a.repeats)
    rates["lazy0"], ids_0 = best_rate(partial(lazy_pass, 0), a.n, a.repeats)
    rates["lazyW"], _ = best_rate(partial(lazy_pass, a.workers), a.n, a.repeats)
    assert sorted(ids_s) == sorted(ids_0), "the two loaders did not read the same samples"
    print(f"{a.n} synthetic samples ({a.image_size} px sources), {a.size} px pad + normalise + vicuna_v1 tokenize, "
          f"micro-batch {a.batch}, {os.cpu_count()} CPU core(s); conversion to shards: {convert_s:.1f} s (once)")
    print(f"  shard DataModule, {a.workers} workers:      {rates['shards']:8.1f} samples/s")
    print(f"  lazy JSON loader, 0 workers:         {rates['lazy0']:8.1f} samples/s   "
          f"ratio {rates['shards'] / rates['lazy0']:.2f}x")
    print(f"  lazy JSON loader, {a.workers} workers:         {rates['lazyW']:8.1f} samples/s   "
          f"ratio {rates['shards'] / rates['lazyW']:.2f}x")
    return rates


if __name__ == "__main__":
    main()
