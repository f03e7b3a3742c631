"""The two evaluation modes on the same synthetic POPE/GQA questions, in one run: the official one (``eval=official``,
LLaVA's model_vqa_loader: batch 1, fp16) and the fast one (``eval=default eval.dtype=bfloat16``: batched greedy
decoding with left padding and the KV cache, bf16) — answers/s of each, and how many answers differ between them.
Both the dtype and the padding change the rounding, so some answers of a random twin differ; with fp32 on both sides
(``--fast-dtype float32 --official-dtype float32``) batching alone must change no answer.

    python benchmarks/generation_benchmark.py [--checkpoint outputs/<run>] [--questions 64] [--max-new-tokens 16]
                                              [--batch-size 16] [--fast-dtype bfloat16] [--official-dtype float16]

Without --checkpoint a random tiny twin (CLIP-336 / Vicuna-7B twins) is used: it rarely stops early, so every
answer runs the full max_new_tokens — the harder case for batching (no early exits to exploit).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DTYPES = ("float32", "bfloat16", "float16")


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
    ap.add_argument("--batch-size", type=int, default=16, help="the fast mode's batch (the official one is 1)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fast-dtype", choices=DTYPES, default="bfloat16")
    ap.add_argument("--official-dtype", choices=DTYPES, default="float16")
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
    root = Path(tempfile.mkdtemp()) / "eval"
    write_synthetic_benchmarks(root, n_images=max(12, args.questions // 2), names=["pope", "gqa"])
    questions = (get_benchmark("pope").questions(root) + get_benchmark("gqa").questions(root))[: args.questions]
    template = get_template("vicuna_v1")
    transform = ImageTransform(model.vision.image_size, "pad", model.vision.image_mean, model.vision.image_std)
    modes = {"official": {"batch_size": 1, "dtype": args.official_dtype},
             "fast": {"batch_size": args.batch_size, "dtype": args.fast_dtype}}
    answers, seconds = {}, {}
    for name, mode in modes.items():  # each mode on its own copy of the fp32 weights
        weights = copy.deepcopy(model).to(getattr(torch, mode["dtype"]))
        run = lambda w=weights, bs=mode["batch_size"]: answer_questions(  # noqa: E731
            w, tok, template, questions, transform, args.max_new_tokens, bs)
        run()  # warm-up
        t0 = time.perf_counter()
        answers[name] = run()
        seconds[name] = time.perf_counter() - t0
    differ = sum(a["text"] != b["text"] for a, b in zip(answers["official"], answers["fast"]))
    n = len(questions)
    out = {"questions": n, "max_new_tokens": args.max_new_tokens, **modes,
           "official_answers_per_s": n / seconds["official"], "fast_answers_per_s": n / seconds["fast"],
           "ratio": seconds["official"] / seconds["fast"], "differing_answers": differ,
           "device": "cpu", "threads": args.threads}
    for name, mode in modes.items():
        label = f"{name} (batch {mode['batch_size']}, {mode['dtype']})"
        print(f"{label:<28}: {out[f'{name}_answers_per_s']:8.2f} answers/s")
    print(f"{'ratio':<28}: {out['ratio']:8.2f}x   answers that differ: {differ} of {n} ({100 * differ / n:.1f} %)")
    if differ and args.fast_dtype == args.official_dtype == "float32":
        sys.exit("batched and one-at-a-time answers differ in fp32")
    return out


if __name__ == "__main__":
    main()
