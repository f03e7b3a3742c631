"""Records, images and the sample → batch path: bad input gives a clear error naming the sample, or a counted skip."""


import numpy as np
import pytest
import torch
from PIL import Image

from lmm.data.images import ImageLoadError, ImageTransform, load_image
from lmm.data.records import RecordError, parse_record


def rec(sid, conv, image="a.png"):
    r = {"id": sid, "conversations": [{"from": f, "value": v} for f, v in conv]}
    if image:
        r["image"] = image
    return r


BAD = {
    "more_image_markers_than_images": rec("m", [("human", "<image>\n<image> Q"), ("gpt", "A")]),
    "ends_with_human_turn": rec("f", [("gpt", "A"), ("human", "<image>\nQ")]),  # the leading reply dropped first
    "empty_reply": rec("e", [("human", "<image>\nQ"), ("gpt", "  ")]),
    "roles_not_alternating": rec("r", [("human", "<image>\nQ"), ("human", "Q2")]),
    "empty_conversation": rec("c", []),
    "image_without_marker": rec("w", [("human", "Q"), ("gpt", "A")]),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_records_name_the_sample(reason):
    with pytest.raises(RecordError) as e:
        parse_record(BAD[reason], 0)
    assert e.value.reason == reason and e.value.sample_id == BAD[reason]["id"]
    assert repr(BAD[reason]["id"]) in str(e.value)


def test_a_leading_assistant_turn_is_dropped_as_llava_does_and_noted():
    r = parse_record(rec("g", [("gpt", "Hello!"), ("human", "<image>\nQ"), ("gpt", "A")]))
    assert r.turns == [("<image>\nQ", "A")] and r.normalised == ["dropped_leading_assistant_turn"]
    assert parse_record(rec("h", [("human", "<image>\nQ"), ("gpt", "A")])).normalised == []


def test_malformed_record_without_id():
    with pytest.raises(RecordError, match="'#3'.*malformed_record"):
        parse_record(["not", "a", "dict"], 3)


def test_image_marker_moves_to_front():
    r = parse_record(rec("x", [("human", "What is this? <image>"), ("gpt", "A cat.")]))
    assert r.turns[0][0] == "<image>\nWhat is this?"


def test_non_rgb_images_convert(tmp_path):
    for mode, arr in [("CMYK", np.zeros((8, 8, 4), np.uint8)), ("RGBA", np.zeros((8, 8, 4), np.uint8)),
                      ("P", None), ("I;16", np.full((8, 8), 40000, np.uint16))]:
        p = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        if mode == "P":
            img = Image.new("P", (8, 8), 3)
        elif mode == "I;16":
            img = Image.fromarray(arr)
        else:
            img = Image.fromarray(arr[..., :3], "RGB").convert(mode)
        img.save(p)
        out = load_image(p)
        assert out.mode == "RGB" and out.size == (8, 8)
    grey = np.asarray(load_image(tmp_path / "I16.png"))
    assert 150 < grey[0, 0, 0] < 160  # 40000/65535 × 255 ≈ 155: rescaled, not clipped to 255


def test_corrupt_and_missing_images(tmp_path):
    good = tmp_path / "g.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:40])
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for name in ("trunc.png", "junk.jpg"):
        with pytest.raises(ImageLoadError, match="corrupt_image"):
            load_image(tmp_path / name)
    with pytest.raises(ImageLoadError, match="missing_image"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_image_transform_matches_clip_processor(aspect):
    from transformers import CLIPImageProcessor

    from lmm.data.images import expand2square

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8))
    ours = ImageTransform(size=28, aspect=aspect)(img)
    proc = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    src = expand2square(img, tuple(int(x * 255) for x in proc.image_mean)) if aspect == "pad" else img
    ref = proc(src, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == ref.shape == (3, 28, 28)
    assert torch.allclose(ours, ref, atol=2e-2)  # PIL vs torchvision bicubic differ by < 1 grey level
    assert (ours - ref).abs().mean() < 2e-3
