"""Answers/s of batched greedy generation (batch 16, left padding, KV cache) vs one question at a time — the
official decoding setting (LLaVA's model_vqa_loader: batch 1) — on the same synthetic POPE/GQA questions, in one run.
In fp32 the answers must be identical; in bf16 (``--dtype bfloat16``, the official evaluation dtype is fp16/bf16)
padding changes the rounding, so the script reports how many answers differ between the two settings.

    python benchmarks/generation_benchmark.py [--checkpoint outputs/<run>] [--questions 64] [--max-new-tokens 16]
                                              [--dtype float32|bfloat16]

Without --checkpoint a random tiny twin (CLIP-336 / Vicuna-7B twins) is used: it rarely stops early, so every
answer runs the full max_new_tokens — the harder case for batching (no early exits to exploit).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None) -> dict:
    import torch
    import yaml

    from lmm.data.images import ImageTransform
    from lmm.evaluation.benchmarks import get_benchmark
    from lmm.evaluation.generate import answer_questions
    from lmm.evaluation.run import resolve_model_dir
    from lmm.models.build import build_llava
    from lmm.models.checkpoint import load_model_dir
    from lmm.synth import tokenizer_corpus
    from lmm.synth.benchmarks import write_synthetic_benchmarks
    from lmm.text.templates import get_template
    from lmm.text.tokenizer import train_tiny_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parents[1]
    cache = Path(os.environ.get("LMM_CACHE", repo / ".cache" / "lmm"))
    if args.checkpoint:
        model, tok, _ = load_model_dir(resolve_model_dir(args.checkpoint))
    else:
        tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000, cache)
        conf = lambda p: yaml.safe_load((repo / "conf" / "model" / p).read_text())  # noqa: E731
        torch.manual_seed(0)
        model = build_llava(conf("vision/clip_vit_l14_336.yaml"), conf("connector/mlp2x_gelu.yaml"),
                            conf("llm/vicuna_7b_v15.yaml"), 2048, tok, twin=True).eval()
    model = model.to(getattr(torch, args.dtype))
    root = Path(tempfile.mkdtemp()) / "eval"
    write_synthetic_benchmarks(root, n_images=max(12, args.questions // 2))
    questions = (get_benchmark("pope").questions(root) + get_benchmark("gqa").questions(root))[: args.questions]
    template = get_template("vicuna_v1")
    transform = ImageTransform(model.vision.image_size, "pad", model.vision.image_mean, model.vision.image_std)
    run = lambda bs: answer_questions(model, tok, template, questions, transform, args.max_new_tokens, bs)  # noqa: E731
    run(args.batch_size)  # warm-up
    t0 = time.perf_counter()
    single = run(1)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = run(args.batch_size)
    t_batched = time.perf_counter() - t0
    differ = sum(a["text"] != b["text"] for a, b in zip(single, batched))
    n = len(questions)
    out = {"questions": n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "dtype": args.dtype,
           "one_at_a_time_answers_per_s": n / t_single, "batched_answers_per_s": n / t_batched,
           "ratio": t_single / t_batched, "identical_answers": differ == 0, "differing_answers": differ,
           "device": "cpu", "threads": args.threads}
    print(f"one at a time : {out['one_at_a_time_answers_per_s']:8.2f} answers/s   (official setting, {args.dtype})")
    print(f"batched ({args.batch_size:>2})  : {out['batched_answers_per_s']:8.2f} answers/s")
    print(f"ratio         : {out['ratio']:8.2f}x   answers that differ: {differ} of {n} ({100 * differ / n:.1f} %)")
    if differ and args.dtype == "float32":
        sys.exit("batched and one-at-a-time answers differ in fp32")
    return out


if __name__ == "__main__":
    main()
