"""The converter: shards + manifest + report, idempotent re-runs, layout independent of workers, WebDataset-readable."""

import json

import pytest
import webdataset as wds

from lmm.data.manifest import Manifest
from lmm.data.shards import convert, decode_image, main, read_member

from .conftest import N_FINETUNE


def quiet(_):
    pass


def test_convert_synthetic_gives_shards_manifest_and_report(syn, shard_dir):
    report = json.loads((shard_dir / "report.json").read_text())
    assert report["records_in"] == N_FINETUNE == report["converted"] + report["rejected"]
    assert report["rejected"] == 0 and report["shards"] == 15 and not report["empty_shards"]
    assert set(report["per_source"]) == {"vqav2", "llava_instruct", "sharegpt"}
    m = Manifest.load(shard_dir)
    assert len(m) == N_FINETUNE and m.source_counts() == report["per_source"]
    records = json.loads(syn["finetune"].read_text())
    assert list(m.ids) == [r["id"] for r in records]
    for i in (0, 17, N_FINETUNE - 1):
        assert m.has_image[i] == ("image" in records[i]) and m.shards[i] == f"shard-{i // 16:06d}.tar"
        assert m.positions[i] == i % 16 and m.words[i] > 0
        meta = json.loads(read_member(shard_dir / m.shards[i], m.members[i]["json"]))
        assert meta["record"] == records[i] and meta["source"] == m.sources[i]  # the raw record is kept
        if m.has_image[i]:
            raw = (syn["images"] / records[i]["image"]).read_bytes()
            assert read_member(shard_dir / m.shards[i], m.members[i]["png"]) == raw
            assert decode_image(raw).mode == "RGB"


def test_shards_stream_with_webdataset(shard_dir):
    urls = sorted(str(p) for p in shard_dir.glob("shard-*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
    samples = list(ds)
    assert [s["__key__"] for s in samples] == list(Manifest.load(shard_dir).keys)
    assert sum("png" in s for s in samples) == sum(Manifest.load(shard_dir).has_image)


def test_second_run_does_no_work_and_layout_ignores_workers(syn, shard_dir, tmp_path):
    tars = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard_dir.glob("shard-*.tar")}
    lines = []
    again = convert(syn["finetune"], syn["images"], shard_dir, shard_size=16, rules="synthetic", echo=lines.append)
    assert again["written_shards"] == 0 and again["skipped_shards"] == 15 and "0 written" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("shard-*.tar")} == {k: v[0] for k, v in tars.items()}
    # two workers: byte-identical shards and the same manifest
    par = convert(syn["finetune"], syn["images"], tmp_path / "w2", workers=2, shard_size=16, rules="synthetic",
                  echo=quiet)
    assert par["written_shards"] == 15
    assert {p.name: p.read_bytes() for p in (tmp_path / "w2").glob("shard-*.tar")} == {k: v[1] for k, v in tars.items()}
    assert (tmp_path / "w2" / "manifest.jsonl").read_text() == (shard_dir / "manifest.jsonl").read_text()
    # a lost shard is redone, the others are skipped
    (tmp_path / "w2" / "shard-000003.json").unlink()
    redo = convert(syn["finetune"], syn["images"], tmp_path / "w2", workers=2, shard_size=16, rules="synthetic",
                   echo=quiet)
    assert redo["written_shards"] == 1 and redo["skipped_shards"] == 14
    # other options in the same folder are refused, not silently mixed
    with pytest.raises(ValueError, match="shard_size"):
        convert(syn["finetune"], syn["images"], tmp_path / "w2", shard_size=8, rules="synthetic", echo=quiet)


def test_cli_with_token_counts(syn, tmp_path, tiny_tokenizer, capsys):
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    argv = ["--json", str(syn["pretrain"]), "--image-folder", str(syn["images"]), "--out", str(tmp_path / "pre"),
            "--source-rules", "lcs558k", "--shard-size", "20", "--tokenizer", str(tok_dir), "--template", "plain",
            "--max-length", "20", "--image-tokens", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "converted 48 of 48 records into 3 shard(s)" in out and "per source: lcs558k 48" in out
    assert "in 48 = out 48 + rejected 0" in out
    m = Manifest.load(tmp_path / "pre")
    # plain template: [BOS, <image>, caption…, "\n"]
    assert all(t >= 4 for t in m.tokens)
    report = json.loads((tmp_path / "pre" / "report.json").read_text())
    over = {m.ids[i] for i in range(len(m)) if m.tokens[i] - 1 + 16 > 20}
    assert set(report["over_length"]) == over and over
