"""`python -m lmm.synth [--root DIR]`: write every synthetic twin once — LCS-558K and the 665K mixture in
LLaVA's `playground/data` layout, and the 12 benchmarks in `playground/data/eval` layout. Idempotent."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lmm.synth import write_llava_data, write_synthetic_benchmarks


def main(argv: list[str] | None = None) -> int:
    default = Path(os.environ.get("LMM_CACHE", Path.cwd() / ".cache" / "lmm")) / "synthetic"
    ap = argparse.ArgumentParser(prog="python -m lmm.synth", description=__doc__)
    ap.add_argument("--root", type=Path, default=default, help=f"output folder (default {default})")
    ap.add_argument("--n-pretrain", type=int, default=512)
    ap.add_argument("--n-finetune", type=int, default=1500)
    ap.add_argument("--n-images", type=int, default=24, help="images per benchmark")
    ap.add_argument("--image-size", type=int, default=64, help="longer image side in pixels (336 for paper-like)")
    ap.add_argument("--seed", type=int, default=42, help="the runs' seed (conf/train.yaml seed: 42)")
    a = ap.parse_args(argv)
    train = a.root / f"llava-{a.seed}-{a.image_size}-{a.n_pretrain}-{a.n_finetune}"
    write_llava_data(train, a.n_pretrain, a.n_finetune, a.image_size, a.seed)
    # the folders a scale=tiny run of this seed reads (conf/scale/tiny.yaml: data.root, eval.data_root)
    bench = write_synthetic_benchmarks(a.root / f"eval-{a.seed}-{a.image_size}-{a.n_images}", a.n_images,
                                       a.image_size, seed=a.seed)
    print(f"training twins (playground/data layout): {train}")
    print(f"benchmark twins (playground/data/eval layout): {bench}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
