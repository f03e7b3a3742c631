"""A record never makes the converter read a file outside the image folder: '..', absolute paths and links that
resolve outside are rejected at conversion with the sample's id and a reason; the other records convert."""

import json
import os

import pytest
from PIL import Image

from lmm.data.records import RecordError, parse_record
from lmm.data.shards import convert


def record(sid, image):
    return {"id": sid, "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                          {"from": "gpt", "value": "A shape."}]}


@pytest.mark.parametrize("path", ["../secret.png", "a/../../secret.png", "/etc/passwd", "\\\\server\\x.png",
                                  "C:/x.png", "..\\secret.png"])
def test_paths_leaving_the_folder_are_rejected_when_parsed(path):
    with pytest.raises(RecordError) as err:
        parse_record(record("bad", path))
    assert err.value.reason == "unsafe_image_path" and err.value.sample_id == "bad"


def test_conversion_rejects_escaping_paths_and_links_and_keeps_the_rest(tmp_path):
    images, outside = tmp_path / "images", tmp_path / "outside"
    images.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "ok.png")
    Image.new("RGB", (8, 8), "blue").save(outside / "secret.png")
    os.symlink(outside / "secret.png", images / "link.png")  # a link inside the folder that points out
    os.symlink(outside, images / "linkdir")
    recs = [record("ok", "ok.png"), record("dotdot", "../outside/secret.png"),
            record("absolute", str(outside / "secret.png")), record("link", "link.png"),
            record("linkdir", "linkdir/secret.png")]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    report = convert(tmp_path / "d.json", images, tmp_path / "shards", rules=[{"source": "x"}], echo=lambda s: None)
    reasons = {r["id"]: r["reason"] for r in report["rejected_samples"]}
    assert reasons == {"dotdot": "unsafe_image_path", "absolute": "unsafe_image_path", "link": "unsafe_image_path",
                       "linkdir": "unsafe_image_path"}
    assert report["records_in"] == len(recs) and report["converted"] == 1 and report["rejected"] == 4  # in = out + rejected
