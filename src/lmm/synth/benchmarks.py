"""Synthetic twins of the twelve LLaVA-1.5 benchmarks, laid out as LLaVA's ``playground/data/eval/<bench>/``
with the official file names and record formats, built from procedurally rendered scenes so every answer is
derivable from the pixels. ``lmm.evaluation.benchmarks`` reads and scores them exactly like the real files.

=============  ==========================================================================================
benchmark      files (under ``root``)
=============  ==========================================================================================
vqav2          ``vqav2/``: val (official questions + annotations, 10 answers) for local scoring; test2015 /
               test-dev (official question files + LLaVA's question JSONL) for the EvalAI file
gqa            ``gqa/llava_gqa_testdev_balanced.jsonl``, ``gqa/data/testdev_balanced_questions.json``
vizwiz         ``vizwiz/val.json`` (incl. unanswerable) for local scoring; ``vizwiz/test.json`` +
               ``vizwiz/llava_test.jsonl`` for the EvalAI file
scienceqa      ``scienceqa/llava_test_CQM-A.json``, ``problems.json``, ``pid_splits.json`` (IMG + text-only)
textvqa        ``textvqa/llava_textvqa_val_v051_ocr.jsonl`` (OCR token line), ``TextVQA_0.5.1_val.json``
pope           ``pope/llava_pope_test.jsonl``, ``pope/coco/coco_pope_{adversarial,popular,random}.json``
mme            ``MME/llava_mme.jsonl``, ``MME/MME_Benchmark_release_version/<task>/`` (images + yes/no GT)
mmbench(_cn)   ``mmbench/mmbench_dev_20230712.tsv``, ``mmbench_cn/mmbench_dev_cn_20231003.tsv``
seed           ``seed_bench/llava-seed-bench.jsonl``, ``seed_bench/SEED-Bench.json``
llava_wild     ``llava-bench-in-the-wild/{questions,context,answers_gpt4}.jsonl``
mmvet          ``mm-vet/llava-mm-vet.jsonl``, ``mm-vet/mm-vet.json``
=============  ==========================================================================================

Deterministic: one seed gives byte-identical files. Idempotent: each benchmark folder keeps a marker keyed on
the parameters and :data:`BENCH_VERSION`; a folder with the same key is left alone, another one is rebuilt.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from lmm.synth.bench_choice import write_mmbench, write_mmbench_cn, write_scienceqa, write_seed
from lmm.synth.bench_common import MARKER, Build
from lmm.synth.bench_gqa import write_gqa
from lmm.synth.bench_judged import write_llava_wild, write_mmvet
from lmm.synth.bench_vqa import write_textvqa, write_vizwiz, write_vqav2
from lmm.synth.bench_yesno import write_mme, write_pope

__all__ = ["BENCH_VERSION", "SYNTH_BENCHMARKS", "write_synthetic_benchmarks"]

BENCH_VERSION = 2  # bump whenever a writer's output changes, so cached folders are rebuilt

# benchmark name (as in lmm.evaluation.benchmarks) -> (its folder under root, writer)
SYNTH_BENCHMARKS: dict[str, tuple[str, Callable[[Build], None]]] = {
    "vqav2": ("vqav2", write_vqav2),
    "gqa": ("gqa", write_gqa),
    "vizwiz": ("vizwiz", write_vizwiz),
    "scienceqa": ("scienceqa", write_scienceqa),
    "textvqa": ("textvqa", write_textvqa),
    "pope": ("pope", write_pope),
    "mme": ("MME", write_mme),
    "mmbench": ("mmbench", write_mmbench),
    "mmbench_cn": ("mmbench_cn", write_mmbench_cn),
    "seed": ("seed_bench", write_seed),
    "llava_wild": ("llava-bench-in-the-wild", write_llava_wild),
    "mmvet": ("mm-vet", write_mmvet),
}


def write_synthetic_benchmarks(
    root: str | Path,
    n_images: int = 24,
    image_size: int = 64,
    *,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> Path:
    """Write the synthetic benchmarks ``names`` (default: all twelve) under ``root`` (LLaVA's
    ``playground/data/eval``) and return ``root``.

    ``n_images`` images per benchmark (per task for MME: ``max(2, n_images // 4)``; the VQAv2 / VizWiz test
    files get ``max(2, n_images // 2)`` more), the longer image side ``image_size`` pixels (336 is the paper's
    resolution). A folder that exists without this module's marker (e.g. real data) is never overwritten."""
    root = Path(root)
    selected = list(SYNTH_BENCHMARKS) if names is None else list(names)
    unknown = [name for name in selected if name not in SYNTH_BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown synthetic benchmark(s) {unknown}; known: {', '.join(SYNTH_BENCHMARKS)}")
    if n_images < 1 or image_size < 8:
        raise ValueError(f"need n_images >= 1 and image_size >= 8, got {n_images} and {image_size}")
    for name in selected:
        folder, writer = SYNTH_BENCHMARKS[name]
        target = root / folder
        key = (
            json.dumps(
                {
                    "benchmark": name,
                    "version": BENCH_VERSION,
                    "seed": seed,
                    "n_images": n_images,
                    "image_size": image_size,
                },
                sort_keys=True,
            )
            + "\n"
        )
        marker = target / MARKER
        if marker.is_file() and marker.read_text(encoding="utf-8") == key:
            continue
        if target.exists():
            if not (target / MARKER).is_file():
                raise FileExistsError(
                    f"{target} exists and was not written by the synthetic benchmark writer; "
                    "refusing to overwrite it (remove it or choose another root)"
                )
            shutil.rmtree(target)
        target.mkdir(parents=True)
        marker.write_text("incomplete\n", encoding="utf-8")  # a crash leaves a folder marked as ours
        writer(Build(root, n_images, image_size, seed, name))
        marker.write_text(key, encoding="utf-8")
    return root
