"""Exact, seed-deterministic subsampling through the manifest: round(r × N), proportions kept, nested, stable."""

import gc
import json
import math
import tracemalloc
from collections import Counter

import pytest

from lmm.data.manifest import Manifest, epoch_items, largest_remainder, select_rows, subsample_counts


def manifest(sizes: dict[str, int]) -> Manifest:
    return Manifest(None, [{"key": f"{s}-{k:05d}", "source": s} for s, n in sizes.items() for k in range(n)])


SIZES = {"llava_instruct": 157, "sharegpt": 41, "vqav2": 83, "gqa": 72, "okvqa": 9, "aokvqa": 66, "vg": 86}


def test_largest_remainder():
    assert largest_remainder({"a": 1.5, "b": 1.5, "c": 1.0}, 4) == {"a": 2, "b": 1, "c": 1}
    assert largest_remainder({"a": 0.2, "b": 0.7, "c": 2.1}, 3) == {"a": 0, "b": 1, "c": 2}
    with pytest.raises(ValueError):
        largest_remainder({"a": 1.0}, 3)


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.1, 0.3, 0.5, 0.77, 1.0])
def test_subsample_is_exact_and_keeps_proportions(ratio):
    counts = subsample_counts(SIZES, ratio)
    assert sum(counts.values()) == round(ratio * sum(SIZES.values()))
    for s, n in SIZES.items():
        assert counts[s] in (math.floor(ratio * n), math.ceil(ratio * n))


def test_selection_is_seeded_nested_and_order_free():
    m = manifest(SIZES)
    a = select_rows(m, 0.3, seed=5)
    assert a == select_rows(m, 0.3, seed=5) != select_rows(m, 0.3, seed=6)
    assert len(a) == round(0.3 * len(m))
    assert set(select_rows(m, 0.1, seed=5)) <= set(a)  # the Fig. 4 sweep's subsets are nested
    # the same keys in another row order (e.g. other shard sizes) give the same keys
    rev = Manifest(None, [{"key": k, "source": s} for k, s in zip(m.keys[::-1], m.sources[::-1])])
    assert {rev.keys[i] for i in select_rows(rev, 0.3, seed=5)} == {m.keys[i] for i in a}


def test_per_source_ratio_include_and_weights():
    m = manifest(SIZES)
    rows = select_rows(m, 0.5, per_source={"vqav2": 0.0, "vg": 1.0}, include={"sharegpt": False}, seed=1)
    got = Counter(m.sources[i] for i in rows)
    assert got["vqav2"] == 0 and got["vg"] == 86 and "sharegpt" not in got
    shared = {s: n for s, n in SIZES.items() if s not in ("vqav2", "vg", "sharegpt")}
    assert sum(got[s] for s in shared) == round(0.5 * sum(shared.values()))
    assert select_rows(m, 1.0, include={"gqa": True}, default_include=False) == [
        i for i, s in enumerate(m.sources) if s == "gqa"]
    with pytest.raises(ValueError, match="subsample"):
        select_rows(m, 1.5)
    all_rows = list(range(len(m)))
    e0 = epoch_items(m, all_rows, {"okvqa": 2.0, "gqa": 0.5}, seed=0, epoch=0)
    e1 = epoch_items(m, all_rows, {"okvqa": 2.0, "gqa": 0.5}, seed=0, epoch=1)
    c0 = Counter(m.sources[i] for i in e0)
    assert c0["okvqa"] == 18 and c0["gqa"] == 36 and c0["vg"] == 86
    assert len(e0) == len(e1) and e0 != e1  # the half of gqa changes from epoch to epoch
    assert epoch_items(m, all_rows, None, 0, 0) == all_rows


def test_manifest_reads_back_every_field_of_its_rows(shard_dir):
    rows = [json.loads(line) for line in (shard_dir / "manifest.jsonl").read_text().splitlines()]
    m = Manifest.load(shard_dir)
    assert len(m) == len(rows) and list(m.keys) == [r["key"] for r in rows]
    for i in (0, 5, len(rows) - 1, -1):
        r = rows[i]
        assert (m.keys[i], m.ids[i], m.sources[i], m.shards[i], m.members[i]) == (
            r["key"], r["id"], r["source"], r["shard"], r["members"])
        assert (bool(m.has_image[i]), int(m.n_images[i]), int(m.words[i]), int(m.tokens[i]), int(m.positions[i])) == (
            r["has_image"], r["n_images"], r["words"], r["tokens"], r["position"])
    assert m.modality_lengths([0, 1]) == [(r["words"] if r["has_image"] else -r["words"]) for r in rows[:2]]
    with pytest.raises(IndexError):
        m.keys[len(rows)]


def test_manifest_holds_no_python_object_per_row():
    """Forked loader workers grow by copy-on-read when they touch (or the garbage collector walks) Python objects
    shared with the trainer — LLaVA's list of dicts. The manifest keeps its rows in numpy arrays and string buffers:
    a fixed handful of Python objects and ≈ 115 bytes a row, however many rows."""
    n = 50_000
    rows = [{"key": f"{k:09d}", "id": f"id-{k}", "source": ("vqav2", "gqa", "sharegpt")[k % 3], "has_image": k % 3 < 2,
             "n_images": int(k % 3 < 2), "words": 10 + k % 50, "tokens": -1, "shard": f"shard-{k // 1000:06d}.tar",
             "position": k % 1000, "members": {"json": [k * 2048, 300], "jpg": [k * 2048 + 1024, 900]}}
            for k in range(n)]
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    m = Manifest(None, rows)
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(gc.get_objects()) - objects < 100
    assert retained / n < 150, f"{retained / n:.0f} bytes per row"
    assert m.members[n - 1] == rows[-1]["members"] and m.sources[4] == "gqa" and m.ids[n - 1] == f"id-{n - 1}"
