"""One decoded-pixel limit for every image read (the converter's verification, the training loader, ``load_image``):
checked from the header before any pixel is decoded, so a small file that claims a huge image costs nothing; and
16-bit images come to RGB without a float64 copy of the whole image."""

import json
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lmm.data.images import ImageLoadError, decode_image, load_image, to_rgb
from lmm.data.shards import convert
from lmm.imaging import MAX_IMAGE_PIXELS, max_image_pixels

RULES = [{"source": "x"}]


def png16(path, width, height):
    """A 16-bit grey PNG of zeros, written a row at a time: 9000×9000 is a 157 KB file (162 MB of pixels)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + 2 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return png16(tmp_path_factory.mktemp("bomb") / "bomb.png", 9000, 9000)


def record(sid, image):
    return {"id": sid, "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                          {"from": "gpt", "value": "A shape."}]}


def test_a_huge_image_is_refused_from_its_header(bomb):
    assert os.path.getsize(bomb) < 200_000 and 9000 * 9000 > MAX_IMAGE_PIXELS
    for load in (lambda: load_image(bomb), lambda: decode_image(bomb.read_bytes(), "bomb.png")):
        with pytest.raises(ImageLoadError) as err:
            load()
        assert err.value.reason == "image_too_large"
        assert "9000x9000" in err.value.detail and "bomb.png" in err.value.detail
        assert "LMM_MAX_IMAGE_PIXELS" in err.value.detail


def test_the_limit_is_read_at_call_time(tmp_path, monkeypatch):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").size == (40, 30)
    monkeypatch.setenv("LMM_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000
    with pytest.raises(ImageLoadError, match="image_too_large.*40x30"):
        load_image(tmp_path / "a.png")
    monkeypatch.setenv("LMM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="LMM_MAX_IMAGE_PIXELS"):
        max_image_pixels()


def test_a_bad_limit_stops_the_loader_at_once_not_as_skips(processor, monkeypatch):
    from lmm.data.reader import SampleReader

    monkeypatch.setenv("LMM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="LMM_MAX_IMAGE_PIXELS"):
        SampleReader(processor)


PEAK = """
import sys
from lmm.data.images import ImageLoadError, decode_image, load_image

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) // 1024

data = open(sys.argv[1], "rb").read()
base = rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) starts again from here
    f.write("5")
for load in (lambda: decode_image(data, "b"), lambda: load_image(sys.argv[1])):
    try:
        load()
    except ImageLoadError as e:
        assert e.reason == "image_too_large", e
print(rss("VmHWM") - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak with Linux's /proc")
def test_decoding_the_bomb_peaks_low(bomb):
    """Measured in a fresh process, from Linux's peak resident size (VmHWM, reset after the imports): 2 GB before the
    limit, a few MB now. Printed for the record; the bound is loose (a regression means hundreds of MB)."""
    got = subprocess.run([sys.executable, "-c", PEAK, str(bomb)], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    grew_mb = int(got.stdout.split()[-1])
    print(f"peak RSS growth decoding a 9000x9000 16-bit PNG: {grew_mb} MB")
    assert grew_mb < 100


def test_the_converter_and_the_loader_apply_the_limit(bomb, tmp_path, processor, tiny_tokenizer, monkeypatch):
    from lmm.data.datamodule import build_datamodule

    images = tmp_path / "img"
    images.mkdir()
    os.link(bomb, images / "bomb.png")
    Image.new("RGB", (8, 8), "red").save(images / "ok.png")
    (tmp_path / "d.json").write_text(json.dumps([record("bomb", "bomb.png"), record("ok", "ok.png")]))
    report = convert(tmp_path / "d.json", images, tmp_path / "v", rules=RULES, echo=lambda s: None)
    assert [(r["id"], r["reason"]) for r in report["rejected_samples"]] == [("bomb", "image_too_large")]
    assert report["converted"] == 1 and json.loads((tmp_path / "v" / "convert.json").read_text())[
        "max_image_pixels"] == MAX_IMAGE_PIXELS
    # unverified shards keep it; the loader skips it, counted, without decoding it
    convert(tmp_path / "d.json", images, tmp_path / "raw", rules=RULES, verify_images=False, echo=lambda s: None)
    cfg = {"num_workers": 0, "finetune": {"shards": str(tmp_path / "raw"), "rules": RULES}}
    dm = build_datamodule(cfg, "finetune", processor, 1, 1, tiny_tokenizer.pad_token_id, 0, num_image_tokens=16)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum((b.skipped for b in batches), Counter()) == Counter(image_too_large=1)
    assert [i for b in batches for i in b.ids] == ["ok"]
    # another limit rejects other records: the same folder is refused, not silently mixed
    monkeypatch.setenv("LMM_MAX_IMAGE_PIXELS", str(10**9))
    with pytest.raises(ValueError, match="max_image_pixels"):
        convert(tmp_path / "d.json", images, tmp_path / "v", rules=RULES, echo=lambda s: None)


def old_to_rgb(img):
    """The float64 formula ``to_rgb`` used before (the reference its output must match bit for bit)."""
    arr = np.asarray(img, dtype=np.float64)
    hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
    return np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)


def test_to_rgb_of_16_and_32_bit_images_is_unchanged():
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    cases = [Image.fromarray(every), Image.fromarray(every).convert("I"),
             Image.frombytes("I;16B", (256, 256), every.astype(">u2").tobytes()),
             Image.fromarray(np.arange(-5000, 5000, 10, dtype=np.int32).reshape(-1, 10)),
             Image.fromarray(np.zeros((3, 4), np.int32)),
             Image.fromarray(np.linspace(-3.0, 1e6, 4000, dtype=np.float32).reshape(40, 100)),
             Image.fromarray(np.random.default_rng(0).random((64, 48), dtype=np.float32) * 0.5)]
    for img in cases:
        got = to_rgb(img)
        assert got.mode == "RGB" and got.size == img.size
        ref = old_to_rgb(img)
        arr = np.asarray(got)
        assert (arr[..., 0] == ref).all() and (arr[..., 1] == ref).all() and (arr[..., 2] == ref).all(), img.mode
