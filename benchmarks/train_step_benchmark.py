"""Training throughput: our stage-2 step vs transformers' ``LlavaForConditionalGeneration`` holding the same weights, on
the same samples, interleaved, in one run — `make bench-train`.

A step is forward + backward + AdamW over the connector and the LLM (the tower frozen), fp32, on ``--threads`` CPU
threads. The samples follow LLaVA-665K's length mix scaled by 1/9 (64 image tokens per image instead of 576, text
lengths / 9): 94 % with an image, one to six question/answer turns (questions and the system prompt unlabelled,
answers labelled), 6 % longer text-only conversations, batched as training batches them (LLaVA's modality-length
grouping). Two modes: ``equal`` (every sample the same length and
structure: nothing to gain from skipping padding) and ``mix`` (the real mix, where padding fills part of every batch).
Reported: useful (non-pad) tokens/s of each, their ratio, and the peak memory of a step above the model (each side
alone in a fresh process; the largest resident set during its steps minus before them). Ours trains as training
does by default: packed (``packing: auto``), timed beside ours padded on the same batches. ``--compile BACKEND``
compiles our LLM's decoder layers as training's ``stages.<stage>.compile`` does (transformers' side stays eager); an
untimed pass of ours over the mode's batches compiles every graph first (its time is reported): run with and without
it to compare our step compiled and eager.

    python benchmarks/train_step_benchmark.py [--modes equal mix] [--steps 6] [--batch 8] [--vocab 32000]
                                              [--no-packing] [--compile inductor|aot_eager]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_samples(mode: str, n: int, seed: int, vocab: int) -> list[tuple[list[int], list[int], bool]]:
    """(input_ids with one image marker or none, labels, has_image) — LLaVA-665K's structure at 1/9 of its lengths."""
    from lmm.text.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(3, vocab - 1) for _ in range(k)]  # noqa: E731  (the last id is the image token)
    out = []
    for _ in range(n):
        if mode == "equal":
            turns, image = [(8, 12)] * 3, True
        elif rng.random() < 0.06:  # ShareGPT-like text-only conversations, the longest
            turns, image = [(rng.randint(5, 25), rng.randint(10, 40)) for _ in range(rng.randint(2, 6))], False
        else:
            turns = [(rng.randint(4, 15), rng.randint(1, 25)) for _ in range(rng.choice((1, 1, 1, 2, 3, 4, 6)))]
            image = True
        ids, labels = tok(4), [IGNORE_INDEX] * 4  # the system prompt
        if image:
            ids, labels = ids + [IMAGE_TOKEN_INDEX], labels + [IGNORE_INDEX]
        for q, a in turns:
            ids, labels = ids + tok(q), labels + [IGNORE_INDEX] * q
            ans = tok(a)
            ids, labels = ids + ans, labels + ans
        out.append((ids, labels, image))
    return out


def batches(samples, batch: int, image_size: int, pad_id: int, seed: int):
    """Micro-batches in training's order: LLaVA's modality-length grouping (:func:`lmm.data.sampler.plan_batches`)."""
    import torch

    from lmm.data.batch import Example, collate
    from lmm.data.sampler import plan_batches

    g = torch.Generator().manual_seed(seed)
    lengths = [len(ids) if img else -len(ids) for ids, _, img in samples]
    plan = plan_batches(lengths, batch, generator=torch.Generator().manual_seed(seed))
    out = []
    for mb in plan.rank_batches(0):
        exs = [Example(str(k), samples[k][0], samples[k][1],
                       torch.randn(1, 3, image_size, image_size, generator=g) if samples[k][2] else None) for k in mb]
        out.append(collate(exs, pad_id, "right"))
    return out


def build(a):
    import torch

    from lmm.interop.llava_hf import build_llava_hf
    from lmm.models.build import build_llava

    torch.manual_seed(0)
    vision = dict(kind="hf", model_type="clip", config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                            num_attention_heads=4, image_size=56, patch_size=7))
    llm = dict(model_type="llama", config=dict(hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                                               num_hidden_layers=a.layers, num_attention_heads=4,
                                               num_key_value_heads=4, vocab_size=a.vocab,
                                               max_position_embeddings=2048, pad_token_id=0))
    ours = build_llava(vision, {"name": "mlp2x_gelu"}, llm, 2048).train()
    hf = build_llava_hf(ours).train()
    if a.compile:  # after the copy: transformers' model gets plain (eager) layers
        from lmm.models.llm import compile_decoder_layers

        compile_decoder_layers(ours.llm, backend=a.compile, dynamic=True)
    for p in hf.model.vision_tower.parameters():
        p.requires_grad_(False)
    for p in ours.vision.parameters():
        p.requires_grad_(False)
    return ours, hf


def step_fns(ours, hf, a):
    import torch

    from lmm.interop.llava_hf import expand_image_markers

    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
    opt_hf = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-5)

    def ours_step(packed: bool):
        def step(b):
            out = ours(b.input_ids, b.attention_mask, b.labels, b.pixel_values, logits="labelled", packed=packed)
            out.loss.backward()
            opt_ours.step()
            opt_ours.zero_grad(set_to_none=True)
            return int(out.attention_mask.sum()), out.attention_mask.numel()

        return step

    expanded = {}  # transformers' input convention (one id per image token), made once per batch, outside the timing

    def hf_inputs(b):
        if id(b) not in expanded:
            expanded[id(b)] = expand_image_markers(b.input_ids, b.attention_mask, b.labels, ours.num_image_tokens,
                                                   hf.config.image_token_id)
        return expanded[id(b)]

    def hf_step(b):
        ids, mask, labels = hf_inputs(b)
        out = hf(input_ids=ids, attention_mask=mask, pixel_values=b.pixel_values, labels=labels)
        out.loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return int(mask.sum()), mask.numel()

    fns = {"ours": ours_step(a.packing), "transformers": hf_step, "prepare": hf_inputs}
    if a.packing and not a.memory_child:  # packed vs padded on the same weights, in the same run
        fns["ours padded"] = ours_step(False)
    return fns


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(a) -> None:
    """One side's steps alone in this process: the largest resident set during them minus the one before."""
    import threading

    import torch

    torch.set_num_threads(a.threads)
    ours, hf = build(a)
    fns = step_fns(ours, hf, a)
    step = fns[a.memory_child]
    data = batches(make_samples(a.mode, a.batch * 3, 1, a.vocab), a.batch, 56, 0, 1)
    for b in data:
        fns["prepare"](b)
    step(data[0])  # optimizer state and allocator pools exist before the measured steps
    before, peak, done = rss_mb(), [0.0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            done.wait(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    for b in data[1:]:
        step(b)
    done.set()
    t.join()
    print(json.dumps({"side": a.memory_child, "step_peak_mb": max(peak[0], rss_mb()) - before}))


def measure_memory(a, mode: str) -> dict[str, float]:
    out = {}
    for side in ("ours", "transformers"):
        cmd = [sys.executable, __file__, "--memory-child", side, "--mode", mode, "--batch", str(a.batch), "--vocab",
               str(a.vocab), "--hidden", str(a.hidden), "--layers", str(a.layers), "--threads", str(a.threads),
               "--packing" if a.packing else "--no-packing", *(["--compile", a.compile] if a.compile else [])]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
        out[side] = json.loads(res.stdout.strip().splitlines()[-1])["step_peak_mb"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=["equal", "mix"], choices=["equal", "mix"])
    p.add_argument("--steps", type=int, default=6, help="timed steps per side and mode (after one warm-up)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000, help="Vicuna's 32K: the LM head's share is realistic")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                   help="ours packed, as training's default (packing: auto; under SDPA rows no wider than the longest "
                        "sample), timed beside ours padded: a packed-vs-padded ratio per mode; --no-packing: padded")
    p.add_argument("--compile", default=None, metavar="BACKEND",
                   help="torch.compile our LLM's decoder layers with this backend (inductor: needs a C compiler on a "
                        "CPU; aot_eager: traces only), as stages.<stage>.compile; default: eager")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="mix", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.memory_child:
        memory_child(a)
        return {}
    import torch

    torch.set_num_threads(a.threads)
    ours, hf = build(a)
    steps = step_fns(ours, hf, a)
    prepare = steps.pop("prepare")
    results = {}
    print(f"stage-2 step (forward + backward + AdamW, fp32, {a.threads} threads): LLM {a.layers}×{a.hidden}, vocab "
          f"{a.vocab}, {ours.num_image_tokens} image tokens, micro-batch {a.batch}; ours: LM head at labelled "
          f"positions{', packed' if a.packing else ', padded'}"
          + (f", decoder layers compiled ({a.compile})" if a.compile else ""))
    for mode in a.modes:
        data = batches(make_samples(mode, a.batch * (a.steps + 1), 0, a.vocab), a.batch, 56, 0, 0)
        for b in data:
            prepare(b)
        tokens, slots = {k: 0 for k in steps}, {k: 0 for k in steps}
        seconds = {k: 0.0 for k in steps}
        compiling = time.perf_counter()
        if a.compile:  # every graph ours needs (with / without a padding mask, ...) is compiled before the timing
            for b in data:
                for side in ("ours", "ours padded"):
                    if side in steps:
                        steps[side](b)
        compiling = time.perf_counter() - compiling
        for i, b in enumerate(data):
            sides = list(steps)
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:  # interleaved, each side first in turn
                t0 = time.perf_counter()
                n, total = steps[side](b)
                if i:  # the first batch warms both up
                    seconds[side] += time.perf_counter() - t0
                    tokens[side] += n
                    slots[side] += total
        rate = {k: tokens[k] / seconds[k] for k in steps}
        mem = measure_memory(a, mode) if a.memory else {}
        results[mode] = {"tokens_per_s": rate, "ratio": rate["ours"] / rate["transformers"], "step_peak_mb": mem,
                         "padding_share": 1 - tokens["transformers"] / slots["transformers"]}
        print(f"{mode}: {results[mode]['padding_share']:.0%} of the padded batches is padding; ours "
              f"{rate['ours']:,.0f} useful tokens/s, transformers {rate['transformers']:,.0f}"
              + (f"; step peak memory above the model: ours {mem['ours']:,.0f} MB, transformers "
                 f"{mem['transformers']:,.0f} MB" if mem else ""))
        label = "real mix" if mode == "mix" else "equal length"
        print(f"{label}: ratio {results[mode]['ratio']:.2f}×")
        if "ours padded" in rate:
            results[mode]["packed_vs_padded"] = rate["ours"] / rate["ours padded"]
            print(f"{mode}: ours packed {rate['ours']:,.0f} useful tokens/s, ours padded {rate['ours padded']:,.0f}: "
                  f"packed vs padded {results[mode]['packed_vs_padded']:.2f}×")
        if a.compile:
            results[mode]["compile_pass_s"] = compiling
            print(f"{mode}: ours compiled ({a.compile}) in an untimed pass over the {len(data)} batches first: "
                  f"{compiling:.1f} s")
    return results


if __name__ == "__main__":
    main()
