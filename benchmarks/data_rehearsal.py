"""Full-size data rehearsal: LLaVA-1.5's two data sets at their real record counts, through the real pipeline, without a
model — `make rehearse-data`.

1. writes a synthetic twin in the official layout with the real counts per source (LCS-558K: 558,128 records;
   llava_v1_5_mix665k: 665,298, spec §2.2) whose records share a few distinct small images (``--distinct-images``);
2. converts each data set with ``--convert-workers`` (records/s, MB/s of shards written, the main process's peak
   memory), then converts it again (idempotent: no shard written);
3. loads the manifest and plans the epoch for ``--ranks`` ranks (LLaVA's grouping, the paper's micro-batches:
   32 in stage 1, 16 in stage 2), timed separately;
4. iterates one full epoch of rank 0's loader with ``--workers`` workers (the real ``SampleProcessor``: pad, resize
   to ``--size`` px, normalise, tokenize), while a thread samples the memory of the main process and of every
   worker: peak RSS, and USS (private memory: what copy-on-write adds to a forked worker; RSS also counts the pages
   it still shares with the trainer) early in the epoch and at its end;
5. as a baseline in the same run, LLaVA's own pattern — ``json.load`` of the whole file into a list of dicts
   (``LazySupervisedDataset.list_data_dict``), read by the same number of forked workers in the same order, each
   item deep-copied as LLaVA's preprocessing does (no image work) — with the same memory probe.

    python benchmarks/data_rehearsal.py [--fraction 1.0] [--stages pretrain finetune] [--ranks 8] [--workers 4]

Everything goes under ``--root`` (default ``$LMM_CACHE/rehearsal``); the twin and the shards are reused by later
runs, the figures are printed and written to ``<root>/rehearsal.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LCS558K, MIX665K = 558_128, 665_298
STAGES = {  # stage: (json, image folder, source rules, template, per-device micro batch, grouping) — as the scripts
    "pretrain": ("LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "LLaVA-Pretrain/images", "lcs558k", "plain", 32, False),
    "finetune": ("llava_v1_5_mix665k.json", ".", "llava_mix665k", "vicuna_v1", 16, True),
}


def memory(pid: int) -> tuple[int, int] | None:
    """(RSS, USS) of a process in bytes; USS = private clean + private dirty pages (smaps_rollup)."""
    try:
        rss = uss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == "Rss":
                    rss = int(rest.split()[0]) * 1024
                elif name in ("Private_Clean", "Private_Dirty"):
                    uss += int(rest.split()[0]) * 1024
        return rss, uss
    except (OSError, ValueError):
        return None


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


class MemoryWatch(threading.Thread):
    """Samples (progress, RSS, USS) of this process and its children every ``interval`` s while a phase runs;
    ``progress`` is the share of the phase's work done, set by the phase (0 … 1)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.progress, self.samples = interval, 0.0, {}
        self._halt = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._halt.is_set():
            for pid in [me, *children(me)]:
                got = memory(pid)
                if got:
                    self.samples.setdefault(pid, []).append((self.progress, *got))
            self._halt.wait(self.interval)

    def __enter__(self) -> MemoryWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()

    def summary(self) -> dict:
        """Main process and each worker: peak RSS, USS after 10 % of the work and at the end, peak USS (MB)."""
        mb = 1 / 2**20
        out = {"main": {}, "workers": []}
        for pid, s in self.samples.items():
            early = next((u for p, _, u in s if p >= 0.1), s[0][2])
            row = {"pid": pid, "rss_peak": max(r for _, r, _ in s) * mb, "uss_early": early * mb,
                   "uss_end": s[-1][2] * mb, "uss_peak": max(u for _, _, u in s) * mb}
            if pid == os.getpid():
                out["main"] = row
            else:
                out["workers"].append(row)
        return out


def iterate(loader, watch: MemoryWatch, total: int, key) -> dict:
    t0, n, seen = time.perf_counter(), 0, 0
    for batch in loader:
        n += key(batch)
        seen += 1
        watch.progress = seen / total
    return {"seconds": time.perf_counter() - t0, "samples": n}


class LlavaListDataset:
    """The baseline: LLaVA's ``LazySupervisedDataset`` holds ``json.load(open(data_path))``, a list of dicts, and its
    ``__getitem__`` reads ``list_data_dict[i]`` and deep-copies the conversation for ``preprocess`` (no image work
    here: this measures what holding the records costs a forked worker, not the pixels)."""

    def __init__(self, path: Path):
        with open(path) as f:
            self.list_data_dict = json.load(f)

    def __len__(self) -> int:
        return len(self.list_data_dict)

    def __getitem__(self, i: int) -> int:
        sources = self.list_data_dict[i]
        conv = copy.deepcopy(sources["conversations"])
        return sum(len(t["value"].split()) for t in conv) + ("image" in sources)


def stage_run(a, stage: str, root: Path, tok) -> dict:
    from torch.utils.data import DataLoader

    from lmm.data.datamodule import build_datamodule
    from lmm.data.images import ImageTransform
    from lmm.data.processor import SampleProcessor
    from lmm.data.shards import convert
    from lmm.text.templates import get_template

    json_rel, images_rel, rules, template, micro, group = STAGES[stage]
    out, res = root / "shards" / stage, {"stage": stage}
    quiet = lambda s: None  # noqa: E731
    with MemoryWatch(a.interval) as watch:
        t0 = time.perf_counter()
        rep = convert(root / "twin" / json_rel, root / "twin" / images_rel, out, workers=a.convert_workers,
                      shard_size=1000, rules=rules, echo=quiet)
        res["convert_seconds"] = dt = time.perf_counter() - t0
    shard_bytes = sum(p.stat().st_size for p in out.glob("shard-*.tar"))
    res.update(records=rep["records_in"], converted=rep["converted"], rejected=rep["rejected"],
               written_shards=rep["written_shards"], shard_gb=shard_bytes / 1e9, records_per_s=rep["records_in"] / dt,
               mb_per_s=shard_bytes / 1e6 / dt, convert_main_rss_peak_mb=watch.summary()["main"]["rss_peak"])
    t0 = time.perf_counter()
    again = convert(root / "twin" / json_rel, root / "twin" / images_rel, out, workers=a.convert_workers,
                    shard_size=1000, rules=rules, echo=quiet)
    res.update(reconvert_seconds=time.perf_counter() - t0, reconvert_written=again["written_shards"])

    proc = SampleProcessor(tok, get_template(template), ImageTransform(a.size, "pad"))
    cfg = {"num_workers": a.workers, stage: {"shards": str(out), "rules": rules, "group_by_modality_length": group}}
    dm = build_datamodule(cfg, stage, proc, micro, 1, tok.pad_token_id, seed=0, rank=0, world_size=a.ranks)
    dm.setup("fit")
    plan = dm.plan(0)
    res.update(manifest_seconds=dm.setup_seconds["manifest"], plan_seconds=dm.setup_seconds["plan"],
               micro_batch=micro, micro_batches_per_rank=plan.micro_batches_per_rank, dropped_by_plan=len(plan.dropped))
    with MemoryWatch(a.interval) as watch:
        it = iterate(dm.train_dataloader(), watch, plan.micro_batches_per_rank, len)
    counts = dm.counts()
    res["loader"] = {**it, "samples_per_s": it["samples"] / it["seconds"], "planned": counts["data/planned"],
                     "trained": counts["data/trained"], "skipped": counts["data/skipped"], **watch.summary()}
    if a.baseline and stage == "finetune":
        order = [int(dm.manifest.keys[i]) for mb in dm.rank_rows(0) for i in mb]  # key = index in the JSON
        t0 = time.perf_counter()
        with MemoryWatch(a.interval) as watch:
            base = LlavaListDataset(root / "twin" / json_rel)
            load_s = time.perf_counter() - t0
            batches = [order[k:k + micro] for k in range(0, len(order), micro)]
            loader = DataLoader(base, batch_sampler=batches, num_workers=a.workers, collate_fn=len)
            bit = iterate(loader, watch, len(batches), lambda n: n)
        res["baseline"] = {"json_load_seconds": load_s, **bit, "samples_per_s": bit["samples"] / bit["seconds"],
                           **watch.summary()}
    return res


def report(res: dict, a) -> list[str]:
    lo = res["loader"]
    cores = min(a.workers, os.cpu_count() or 1)
    lines = [f"[{res['stage']}] {res['records']:,} records → {res['converted']:,} samples in {res['shard_gb']:.2f} GB "
             f"of shards ({res['rejected']} rejected)",
             f"  conversion ({a.convert_workers} workers): {res['convert_seconds']:.0f} s = "
             f"{res['records_per_s']:,.0f} records/s, {res['mb_per_s']:.1f} MB/s written; main process peak RSS "
             f"{res['convert_main_rss_peak_mb']:,.0f} MB" + ("" if res["written_shards"] else
                                                              " (already converted: nothing written)"),
             f"  converting again: {res['reconvert_seconds']:.2f} s, {res['reconvert_written']} shards written",
             f"  manifest load {res['manifest_seconds']:.1f} s; selection + plan for {a.ranks} ranks "
             f"{res['plan_seconds']:.1f} s ({res['micro_batches_per_rank']:,} micro-batches of {res['micro_batch']} "
             f"per rank, {res['dropped_by_plan']} dropped by the plan)",
             f"  rank 0's epoch, {a.workers} workers, {a.size} px: {lo['samples']:,} samples in {lo['seconds']:.0f} s = "
             f"{lo['samples_per_s']:.0f} samples/s on {cores} core(s) ({lo['samples_per_s'] / cores:.0f} per core; "
             f"the paper's stage 2 consumes ≈ 20 samples/s for all 8 GPUs); planned {lo['planned']:.0f} = trained "
             f"{lo['trained']:.0f} + skipped {lo['skipped']:.0f}"]
    lines += memory_lines("loader", lo)
    if "baseline" in res:
        b = res["baseline"]
        lines.append(f"  baseline, LLaVA's list of dicts (json.load {b['json_load_seconds']:.1f} s), same order, "
                     f"{a.workers} workers, no image work: {b['samples']:,} samples in {b['seconds']:.0f} s")
        lines += memory_lines("baseline", b)
    return lines


def memory_lines(name: str, r: dict) -> list[str]:
    m = r["main"]
    lines = [f"    {name} main process: peak RSS {m['rss_peak']:,.0f} MB, USS {m['uss_early']:,.0f} → "
             f"{m['uss_end']:,.0f} MB"]
    for k, w in enumerate(r["workers"]):
        lines.append(f"    {name} worker {k}: peak RSS {w['rss_peak']:,.0f} MB; USS after 10 % of the epoch "
                     f"{w['uss_early']:,.0f} MB → at its end {w['uss_end']:,.0f} MB (peak {w['uss_peak']:,.0f}; "
                     f"growth {w['uss_end'] - w['uss_early']:+,.0f} MB)")
    return lines


def main(argv: list[str] | None = None) -> dict:
    import torch

    from lmm.synth import tokenizer_corpus
    from lmm.synth.sources import write_llava_data
    from lmm.text.tokenizer import default_cache_dir, train_tiny_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="work folder (default: $LMM_CACHE/rehearsal, else ~/.cache/lmm/rehearsal)")
    p.add_argument("--fraction", type=float, default=1.0, help="scale the record counts (1.0 = the real sizes)")
    p.add_argument("--stages", nargs="+", default=["pretrain", "finetune"], choices=list(STAGES))
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--workers", type=int, default=4, help="loader workers per rank (the official scripts: 4)")
    p.add_argument("--convert-workers", type=int, default=2)
    p.add_argument("--size", type=int, default=336, help="model input size (px)")
    p.add_argument("--image-size", type=int, default=64, help="size of the twin's source images (px)")
    p.add_argument("--distinct-images", type=int, default=64, help="distinct images per image folder")
    p.add_argument("--no-baseline", dest="baseline", action="store_false")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(a.root) if a.root else default_cache_dir() / "rehearsal"
    n_pre, n_fine = round(LCS558K * a.fraction), round(MIX665K * a.fraction)
    t0 = time.perf_counter()
    write_llava_data(root / "twin", n_pre, n_fine, a.image_size, seed=0, distinct_images=a.distinct_images)
    twin_s = time.perf_counter() - t0
    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000, default_cache_dir(), 2048)
    out = {"args": vars(a), "cpu_count": os.cpu_count(), "twin_seconds": twin_s,
           "stages": [stage_run(a, s, root, tok) for s in a.stages]}
    lines = [f"data rehearsal: {n_pre:,} + {n_fine:,} records (fraction {a.fraction}), {a.ranks} ranks × {a.workers} "
             f"workers, {os.cpu_count()} CPU core(s); twin written in {twin_s:.0f} s (reused when present)"]
    for res in out["stages"]:
        lines += report(res, a)
    print("\n".join(lines))
    (root / "rehearsal.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
