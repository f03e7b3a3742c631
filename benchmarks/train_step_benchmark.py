"""Training throughput: our stage-2 step vs transformers' ``LlavaForConditionalGeneration`` holding the same weights, on
the same samples, interleaved, in one run — `make bench-train`.

A step is forward + backward + AdamW over the connector and the LLM (the tower frozen), fp32, on ``--threads`` CPU
threads. The samples follow LLaVA-665K's length mix scaled by 1/9 (64 image tokens per image instead of 576, text
lengths / 9): 94 % with an image, one to six question/answer turns (questions and the system prompt unlabelled,
answers labelled), 6 % longer text-only conversations, batched as training batches them (LLaVA's modality-length
grouping). Two modes: ``equal`` (every sample the same length and
structure: nothing to gain from skipping padding) and ``mix`` (the real mix, where padding fills part of every batch).
Reported: useful (non-pad) tokens/s of each, their ratio, the median (and range) of the per-batch ratios — each batch
timed on both sides seconds apart, so a load spike on a shared machine moves few of them — and the peak memory of a
step above the model (each side alone in a fresh process; the largest resident set during its steps minus before
them). Ours trains as training
does by default: packed (``packing: auto``), timed beside ours padded on the same batches. ``--compile BACKEND``
compiles our LLM's decoder layers as training's ``stages.<stage>.compile`` does (transformers' side stays eager); an
untimed pass of ours over the mode's batches compiles every graph first (its time is reported): run with and without
it to compare our step compiled and eager.

Two shapes (``--shape toy 7b`` runs both). ``toy`` (the default: ``--hidden 256 --layers 4 --vocab 32000``, 64 image
tokens, lengths at 1/9): at Vicuna's 32K vocabulary its LM head costs 2.5× its whole decoder, so the label-only head
dominates the ratio — a win a 7B model, whose head is 2 % of its FLOPs, will not see. ``7b``: LLaVA-1.5-7B's
proportions on a CPU — the LM head's FLOPs per token over the decoder's (Vicuna-7B: 32,000 × 4,096 against 32 layers
of 4h² + 3·h·i), attention's share of a layer at the length cap (the cap / width ratio of 2,048 / 4,096 kept: 128
tokens at width 256), the image's share of the cap (576 of 2,048 → 36 of 128) and the sample lengths at 1/16 —
with a 250-token vocabulary so that the head stays 2 % of the decoder. Each shape prints its proportions next to the
paper model's (read from ``conf/``).

    python benchmarks/train_step_benchmark.py [--shape toy 7b] [--modes equal mix] [--steps 6] [--batch 8]
                                              [--vocab 32000] [--no-packing] [--compile inductor|aot_eager]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
PAPER_CAP = 2048  # model.max_length (conf/train.yaml): LLaVA's --model_max_length
# The model shapes (module docstring). scale: sample lengths at 1/scale of LLaVA-665K's; cap = 2048 / scale.
SHAPES = {
    "toy": dict(hidden=256, layers=4, intermediate=256 * 11 // 4, vocab=32000, image_size=56, patch=7, scale=9,
                max_length=2048),
    "7b": dict(hidden=256, layers=4, intermediate=round(256 * 11008 / 4096), vocab=250, image_size=42, patch=7,
               scale=16, max_length=128),
}


def proportions(shape: dict) -> dict[str, float]:
    """A shape's LM head / decoder FLOPs per token, attention's share of the decoder's FLOPs per token at the cap
    (``2048 / scale`` tokens: QKᵀ and AV, ``4·h·T`` per layer, against the projections' and MLP's ``2·(4h² + 3·h·i)``),
    and the image tokens' share of the cap."""
    h, i, layers, cap = shape["hidden"], shape["intermediate"], shape["layers"], PAPER_CAP // shape["scale"]
    dense = 2.0 * layers * (4 * h * h + 3 * h * i)
    attention = 4.0 * layers * h * cap
    return {"head_vs_decoder": 2.0 * shape["vocab"] * h / dense, "attention_share": attention / (attention + dense),
            "image_share": (shape["image_size"] // shape["patch"]) ** 2 / cap, "cap": cap}


def paper_proportions() -> dict[str, float]:
    """The same for LLaVA-1.5-7B, from the configs' ``arch`` blocks (Vicuna-7B, CLIP ViT-L/14-336) and
    ``model.max_length``."""
    from omegaconf import OmegaConf

    llm = OmegaConf.load(REPO / "conf" / "model" / "llm" / "vicuna_7b_v15.yaml").arch
    vision = OmegaConf.load(REPO / "conf" / "model" / "vision" / "clip_vit_l14_336.yaml").arch
    cap = int(OmegaConf.load(REPO / "conf" / "train.yaml").model.max_length)
    assert cap == PAPER_CAP and llm.num_key_value_heads == llm.num_attention_heads
    return proportions(dict(hidden=llm.hidden_size, intermediate=llm.intermediate_size, layers=llm.num_hidden_layers,
                            vocab=llm.vocab_size, image_size=vision.image_size, patch=vision.patch_size, scale=1))


def make_samples(mode: str, n: int, seed: int, vocab: int, scale: int = 9,
                 cap: tuple[int, int] | None = None) -> list[tuple[list[int], list[int], bool]]:
    """(input_ids with one image marker or none, labels, has_image) — LLaVA-665K's structure at 1/``scale`` of its
    lengths (the lengths written below are at 1/9). ``cap = (max_length, image_tokens)``: a sample is cut where the
    spliced sequence reaches ``max_length`` (LLaVA truncates at ``model_max_length``), so both sides see the same
    tokens."""
    from lmm.text.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(3, vocab - 1) for _ in range(k)]  # noqa: E731  (the last id is the image token)
    at = lambda k: max(1, round(k * 9 / scale))  # noqa: E731  (a length at 1/9 → at 1/scale)
    out = []
    for _ in range(n):
        if mode == "equal":
            turns, image = [(8, 12)] * 3, True
        elif rng.random() < 0.06:  # ShareGPT-like text-only conversations, the longest
            turns, image = [(rng.randint(5, 25), rng.randint(10, 40)) for _ in range(rng.randint(2, 6))], False
        else:
            turns = [(rng.randint(4, 15), rng.randint(1, 25)) for _ in range(rng.choice((1, 1, 1, 2, 3, 4, 6)))]
            image = True
        turns = [(at(q), at(a)) for q, a in turns]
        ids, labels = tok(at(4)), [IGNORE_INDEX] * at(4)  # the system prompt
        if image:
            ids, labels = ids + [IMAGE_TOKEN_INDEX], labels + [IGNORE_INDEX]
        for q, a in turns:
            ids, labels = ids + tok(q), labels + [IGNORE_INDEX] * q
            ans = tok(a)
            ids, labels = ids + ans, labels + ans
        if cap is not None:
            keep = cap[0] - (cap[1] - 1 if image else 0)
            ids, labels = ids[:keep], labels[:keep]
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


def cap_of(shape: dict) -> tuple[int, int]:
    return shape["max_length"], (shape["image_size"] // shape["patch"]) ** 2


def shape_of(a, name: str) -> dict:
    """The named shape; ``--hidden / --layers / --vocab`` resize the toy one (the 7b one keeps its proportions)."""
    shape = dict(SHAPES[name])
    if name == "toy":
        shape.update(hidden=a.hidden, layers=a.layers, vocab=a.vocab, intermediate=a.hidden * 11 // 4)
    return shape


def build(a, shape: dict):
    import torch

    from lmm.interop.llava_hf import build_llava_hf
    from lmm.models.build import build_llava

    torch.manual_seed(0)
    vision = dict(kind="hf", model_type="clip", config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                            num_attention_heads=4, image_size=shape["image_size"],
                                                            patch_size=shape["patch"]))
    llm = dict(model_type="llama", config=dict(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                                               num_hidden_layers=shape["layers"], num_attention_heads=4,
                                               num_key_value_heads=4, vocab_size=shape["vocab"],
                                               max_position_embeddings=2048, pad_token_id=0))
    ours = build_llava(vision, {"name": "mlp2x_gelu"}, llm, shape["max_length"]).train()
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
    shape = shape_of(a, a.shape[0])
    ours, hf = build(a, shape)
    fns = step_fns(ours, hf, a)
    step = fns[a.memory_child]
    data = batches(make_samples(a.mode, a.batch * 3, 1, shape["vocab"], shape["scale"], cap_of(shape)), a.batch,
                   shape["image_size"], 0, 1)
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


def measure_memory(a, mode: str, shape: str) -> dict[str, float]:
    out = {}
    for side in ("ours", "transformers"):
        cmd = [sys.executable, __file__, "--memory-child", side, "--mode", mode, "--batch", str(a.batch), "--vocab",
               str(a.vocab), "--hidden", str(a.hidden), "--layers", str(a.layers), "--threads", str(a.threads),
               "--shape", shape,
               "--packing" if a.packing else "--no-packing", *(["--compile", a.compile] if a.compile else [])]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
        out[side] = json.loads(res.stdout.strip().splitlines()[-1])["step_peak_mb"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", nargs="+", default=["toy"], choices=list(SHAPES),
                   help="toy (the figures quoted at 1/9) and/or 7b (LLaVA-1.5-7B's proportions; module docstring)")
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
    return {name: run_shape(a, name) for name in a.shape}


def run_shape(a, name: str) -> dict:
    """Both sides over the modes at one shape; lines of a shape other than ``toy`` are prefixed with its name."""
    shape = shape_of(a, name)
    ours, hf = build(a, shape)
    steps = step_fns(ours, hf, a)
    prepare = steps.pop("prepare")
    results = {}
    mine, paper = proportions(shape), paper_proportions()
    tag, label_tag = ("", "") if name == "toy" else (f"{name} ", f"{name}-proportioned ")
    print(f"shape {name}: LM head / decoder FLOPs {100 * mine['head_vs_decoder']:.1f} % (LLaVA-1.5-7B "
          f"{100 * paper['head_vs_decoder']:.1f} %), attention at the cap {100 * mine['attention_share']:.1f} % of the "
          f"decoder's at {mine['cap']} tokens ({100 * paper['attention_share']:.1f} % at {paper['cap']}), image "
          f"tokens {ours.num_image_tokens} of {mine['cap']} ({100 * mine['image_share']:.0f} %; 576 of 2048, "
          f"{100 * paper['image_share']:.0f} %)")
    print(f"stage-2 step (forward + backward + AdamW, fp32, {a.threads} threads): LLM {shape['layers']}×"
          f"{shape['hidden']}, vocab {shape['vocab']}, {ours.num_image_tokens} image tokens, samples at 1/"
          f"{shape['scale']} of LLaVA-665K's lengths, micro-batch {a.batch}; ours: LM head at labelled "
          f"positions{', packed' if a.packing else ', padded'}"
          + (f", decoder layers compiled ({a.compile})" if a.compile else ""))
    for mode in a.modes:
        data = batches(make_samples(mode, a.batch * (a.steps + 1), 0, shape["vocab"], shape["scale"],
                                    cap_of(shape)), a.batch, shape["image_size"], 0, 0)
        for b in data:
            prepare(b)
        tokens, slots = {k: 0 for k in steps}, {k: 0 for k in steps}
        seconds, per_batch = {k: 0.0 for k in steps}, []
        compiling = time.perf_counter()
        if a.compile:  # every graph ours needs (with / without a padding mask, ...) is compiled before the timing
            for b in data:
                for side in ("ours", "ours padded"):
                    if side in steps:
                        steps[side](b)
        compiling = time.perf_counter() - compiling
        for i, b in enumerate(data):
            sides, took = list(steps), {}
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:  # interleaved, each side first in turn
                t0 = time.perf_counter()
                n, total = steps[side](b)
                took[side] = time.perf_counter() - t0
                if i:  # the first batch warms both up
                    seconds[side] += took[side]
                    tokens[side] += n
                    slots[side] += total
            if i:  # the same batch, seconds apart: a load spike on a shared machine moves few of these
                per_batch.append(took["transformers"] / took["ours"])
        rate = {k: tokens[k] / seconds[k] for k in steps}
        mem = measure_memory(a, mode, name) if a.memory else {}
        results[mode] = {"tokens_per_s": rate, "ratio": rate["ours"] / rate["transformers"], "step_peak_mb": mem,
                         "padding_share": 1 - tokens["transformers"] / slots["transformers"]}
        print(f"{tag}{mode}: {results[mode]['padding_share']:.0%} of the padded batches is padding; ours "
              f"{rate['ours']:,.0f} useful tokens/s, transformers {rate['transformers']:,.0f}"
              + (f"; step peak memory above the model: ours {mem['ours']:,.0f} MB, transformers "
                 f"{mem['transformers']:,.0f} MB" if mem else ""))
        label = "real mix" if mode == "mix" else "equal length"
        print(f"{label_tag}{label}: ratio {results[mode]['ratio']:.2f}×")
        per_batch.sort()
        results[mode]["per_batch_ratio_median"] = per_batch[len(per_batch) // 2]
        print(f"{label_tag}{label}: per-batch ratio median {per_batch[len(per_batch) // 2]:.2f}× (range "
              f"{per_batch[0]:.2f}–{per_batch[-1]:.2f}× over {len(per_batch)} batches)")
        if "ours padded" in rate:
            results[mode]["packed_vs_padded"] = rate["ours"] / rate["ours padded"]
            print(f"{tag}{mode}: ours packed {rate['ours']:,.0f} useful tokens/s, ours padded "
                  f"{rate['ours padded']:,.0f}: packed vs padded {results[mode]['packed_vs_padded']:.2f}×")
        if a.compile:
            results[mode]["compile_pass_s"] = compiling
            print(f"{tag}{mode}: ours compiled ({a.compile}) in an untimed pass over the {len(data)} batches first: "
                  f"{compiling:.1f} s")
    return results


if __name__ == "__main__":
    main()
