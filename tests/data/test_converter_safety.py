"""What the converter writes can be read by anyone's WebDataset without running code, and ``--force`` never loses a
good conversion: only image members with image extensions (an ``x.json`` or ``x.pkl`` "image" is rejected with its
id, never stored), a file without an extension is named by its content, and a forced re-conversion replaces the old
folder only once the new one is complete."""

import json
import pickle
import re

import pytest
import webdataset as wds
from PIL import Image

from lmm.data.manifest import Manifest
from lmm.data.shards import convert, main

RULES = [{"source": "x"}]
IMAGE_KINDS = {"a.png": "PNG", "b.jpg": "JPEG", "c.JPEG": "JPEG", "d.gif": "GIF", "e.bmp": "BMP", "f.webp": "WEBP",
               "g.tif": "TIFF", "h.tiff": "TIFF", "noext": "PNG", "jpeg_noext": "JPEG"}


def quiet(_):
    pass


def record(sid, image=None):
    r = {"id": sid, "conversations": [{"from": "human", "value": ("<image>\n" if image else "") + "What?"},
                                      {"from": "gpt", "value": "A shape."}]}
    if image is not None:
        r["image"] = image
    return r


class Marker:
    """A pickle that, when loaded, creates a file: the proof that a reader of the shards ran someone's code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_images(root, marker):
    root.mkdir(parents=True)
    for name, fmt in IMAGE_KINDS.items():
        Image.new("RGB", (12, 10), (10, 200, 30)).save(root / name, fmt)
    Image.new("RGB", (12, 10), "red").save(root / "x.json", "PNG")  # an image named like the metadata member
    (root / "x.pkl").write_bytes(pickle.dumps(Marker(marker)))
    (root / "x.npy").write_bytes(b"\x93NUMPY not really")
    (root / "x.png.gz").write_bytes(b"\x1f\x8b not really")


def members(sample):
    return {k for k in sample if not k.startswith("__")}


@pytest.mark.parametrize("verify", [True, False])
def test_only_json_and_image_members_and_nothing_runs_on_a_plain_decode(tmp_path, verify):
    marker = tmp_path / "pwned"
    write_images(tmp_path / "img", marker)
    recs = [record(name.replace(".", "_"), name) for name in IMAGE_KINDS]
    recs += [record("as-json", "x.json"), record("as-pickle", "x.pkl"), record("as-npy", "x.npy"),
             record("as-gz", "x.png.gz"), record("text")]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    out = tmp_path / "shards"
    report = convert(tmp_path / "d.json", tmp_path / "img", out, shard_size=4, rules=RULES, verify_images=verify,
                     echo=quiet)
    bad = {"as-json", "as-pickle", "as-npy", "as-gz"}
    assert {r["id"]: r["reason"] for r in report["rejected_samples"]} == dict.fromkeys(bad,
                                                                                  "unsupported_image_extension")
    assert "x.pkl" in next(r["detail"] for r in report["rejected_samples"] if r["id"] == "as-pickle")
    assert report["records_in"] == len(recs) == report["converted"] + report["rejected"] and report["rejected"] == 4

    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    plain = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    pil = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert not marker.exists()
    assert [s["json"]["id"] for s in plain] == [r["id"] for r in recs if r["id"] not in bad]
    for raw, img in zip(plain, pil):
        meta = raw["json"]
        assert isinstance(meta, dict) and meta["record"] == next(r for r in recs if r["id"] == meta["id"])
        assert members(raw) == {"json", *meta["images"]}
        for ext in meta["images"]:  # every image member is bytes to a plain decode and an image to decode("pil")
            assert ext in wds.autodecode.IMAGE_EXTENSIONS
            assert isinstance(raw[ext], bytes) and isinstance(img[ext], Image.Image) and img[ext].size == (12, 10)
    names = {s["json"]["id"]: s["json"]["images"] for s in plain}
    assert names["noext"] == ["png"] and names["jpeg_noext"] == ["jpg"]  # named by their content
    assert names["c_JPEG"] == ["jpg"] and names["h_tiff"] == ["tiff"] and names["text"] == []
    assert set(Manifest.load(out).ids) == {r["id"] for r in recs} - bad


def test_a_file_without_extension_that_is_no_image_is_rejected(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "blob").write_bytes(b"just some bytes")
    (tmp_path / "d.json").write_text(json.dumps([record("blob", "blob")]))
    report = convert(tmp_path / "d.json", tmp_path / "img", tmp_path / "shards", rules=RULES, verify_images=False,
                     echo=quiet)
    assert [(r["id"], r["reason"]) for r in report["rejected_samples"]] == [("blob", "unsupported_image_extension")]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def converted(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "a.png")
    src = tmp_path / "d.json"
    src.write_text(json.dumps([record("a", "a.png"), record("t")]))
    out = tmp_path / "shards"
    convert(src, images, out, shard_size=1, rules=RULES, echo=quiet)
    return src, images, out


@pytest.mark.parametrize("kind", ["invalid_json", "not_a_list", "missing", "a_folder"])
def test_force_with_a_bad_input_leaves_the_old_conversion_intact(converted, tmp_path, kind):
    src, images, out = converted
    before = snapshot(out)
    if kind == "invalid_json":
        src.write_text('[{"id": "a", "conversations": [')
    elif kind == "not_a_list":
        src.write_text('{"id": "a"}')
    elif kind == "missing":
        src.unlink()
    else:
        src.unlink()
        src.mkdir()
    with pytest.raises((ValueError, OSError), match=re.escape(str(src))):
        convert(src, images, out, shard_size=1, rules=RULES, force=True, echo=quiet)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "d.json") == ["img", "shards"]  # no sibling left


def test_force_replaces_the_conversion_once_the_new_one_is_complete(converted, tmp_path):
    src, images, out = converted
    src.write_text(json.dumps([record("b", "a.png")]))
    report = convert(src, images, out, shard_size=1, rules=RULES, force=True, echo=quiet)
    assert report["converted"] == 1 and list(Manifest.load(out).ids) == ["b"]
    assert sorted(p.name for p in out.iterdir()) == ["convert.json", "manifest.jsonl", "report.json",
                                                     "shard-000000.json", "shard-000000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "img", "shards"]
    # the CLI's --force goes the same way
    src.write_text(json.dumps([record("c", "a.png"), record("d")]))
    assert main(["--json", str(src), "--image-folder", str(images), "--out", str(out), "--shard-size", "1",
                 "--source-rules", "synthetic", "--unknown-source", "tag", "--force"]) == 0
    assert list(Manifest.load(out).ids) == ["c", "d"] and len(list(out.glob("shard-*.tar"))) == 2


def test_force_refuses_a_folder_holding_other_files(converted, tmp_path):
    src, images, out = converted
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ValueError, match="notes.txt"):
        convert(src, images, out, shard_size=1, rules=RULES, force=True, echo=quiet)
    assert snapshot(out) == before
