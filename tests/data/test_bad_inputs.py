"""Every kind of bad input is rejected at conversion (id + reason in the report) or skipped and counted at load time;
nothing crashes a worker, nothing is lost silently, and counts in = out + rejected/skipped."""

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lmm.data.datamodule import build_datamodule
from lmm.data.manifest import Manifest
from lmm.data.shards import convert, decode_image, read_member

RULES = [{"source": "vqav2", "image_prefix": "coco/"}, {"source": "sharegpt", "has_image": False}]
LONG_REPLY = " ".join(["a red circle on the left and a blue square on the right"] * 70)
NON_RGB = ("cmyk-img", "palette-img", "rgba-img", "grey16-img")


def conv(*turns):
    return [{"from": f, "value": v} for f, v in turns]


def img(sid, path, q="What is it?", a="A shape."):
    return {"id": sid, "image": path, "conversations": conv(("human", f"<image>\n{q}"), ("gpt", a))}


def write_fixture(root):
    (root / "coco").mkdir(parents=True)
    (root / "other").mkdir()
    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    rgb.save(root / "coco/good.png")
    rgb.save(root / "other/unknown.png")
    Image.new("CMYK", (30, 40), (0, 255, 255, 0)).save(root / "coco/cmyk.jpg", "JPEG")
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(root / "coco/palette.png", transparency=0)
    Image.new("RGBA", (32, 32), (0, 0, 255, 128)).save(root / "coco/rgba.png")
    Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)).save(root / "coco/grey16.png")
    (root / "coco/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 20)
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, "JPEG")
    (root / "coco/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    lines = [
        # valid records, in shards of 2: [good, text] [missing, corrupt] → an empty shard, [truncated, cmyk] ...
        json.dumps(img("good-img", "coco/good.png")),
        json.dumps({"id": "good-text", "conversations": conv(("human", "What is 2 plus 2?"), ("gpt", "4."))}),
        json.dumps(img("more-markers", "coco/good.png", q="<image>\nCompare them.")),
        json.dumps(img("missing-img", "coco/nope.jpg")),
        json.dumps({"id": "roles", "image": "coco/good.png",
                    "conversations": conv(("human", "<image>\nQ"), ("human", "Q2"), ("gpt", "A"), ("gpt", "A2"))}),
        json.dumps(img("corrupt-img", "coco/corrupt.jpg")),
        json.dumps({"id": "gpt-first", "image": "coco/good.png", "conversations": conv(("gpt", "Hi"),
                                                                                     ("human", "<image>\nQ"))}),
        json.dumps(img("truncated-img", "coco/truncated.jpg")),
        json.dumps(img("cmyk-img", "coco/cmyk.jpg")),
        json.dumps({"id": "empty-conv", "image": "coco/good.png", "conversations": []}),
        json.dumps(img("empty-reply", "coco/good.png", a="   ")),
        '{"id": "broken-json", "conversations": [{"from": "human", "val',
        "42",
        json.dumps({"id": "no-conversations", "image": "coco/good.png"}),
        json.dumps(img("palette-img", "coco/palette.png")),
        json.dumps(img("unknown-source", "other/unknown.png")),
        json.dumps(img("rgba-img", "coco/rgba.png")),
        json.dumps(img("grey16-img", "coco/grey16.png")),
        json.dumps(img("over-long", "coco/good.png", a=LONG_REPLY)),
    ]
    (root / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return root / "bad.jsonl"


REJECTED = {
    "missing_image": ["missing-img"], "corrupt_image": ["corrupt-img", "truncated-img"],
    "more_image_markers_than_images": ["more-markers"], "roles_not_alternating": ["roles"],
    "ends_with_human_turn": ["gpt-first"], "empty_conversation": ["empty-conv"], "empty_reply": ["empty-reply"],
    "malformed_json": ["line 12"], "malformed_record": ["#11", "no-conversations"], "unknown_source": ["unknown-source"],
}
TRAINED = {"good-img", "good-text", "over-long", *NON_RGB}


@pytest.fixture
def bad(tmp_path):
    return write_fixture(tmp_path / "raw")


def run_epoch(shards, processor, pad_id, workers=2):
    cfg = {"num_workers": workers, "finetune": {"shards": str(shards), "rules": RULES}}
    dm = build_datamodule(cfg, "finetune", processor, 2, 1, pad_id, 0, num_image_tokens=16, max_length=512)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    return dm, batches


def test_conversion_rejects_each_bad_kind_with_its_id_and_reason(bad, tmp_path, tiny_tokenizer, capsys):
    report = convert(bad, bad.parent, tmp_path / "shards", shard_size=2, rules=RULES, tokenizer=tiny_tokenizer,
                     template="vicuna_v1", num_image_tokens=16, max_length=512)
    got: dict[str, list[str]] = {}
    for r in report["rejected_samples"]:
        got.setdefault(r["reason"], []).append(r["id"])
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in REJECTED.items()}
    assert report["records_in"] == 19 == report["converted"] + report["rejected"] and report["converted"] == 7
    assert report["empty_shards"] == ["shard-000001.tar"] and report["over_length"] == ["over-long"]
    out = capsys.readouterr().out
    assert "'truncated-img': corrupt_image" in out and "in 19 = out 7 + rejected 12" in out
    assert "empty shards: 1" in out
    # non-RGB images are kept as they are and come out as RGB
    m = Manifest.load(tmp_path / "shards")
    for sid in NON_RGB:
        i = m.ids.index(sid)
        ext = next(k for k in m.members[i] if k != "json")
        im = decode_image(read_member(tmp_path / "shards" / m.shards[i], m.members[i][ext]))
        assert im.mode == "RGB" and im.size[0] > 0
    assert Image.open(bad.parent / "coco/grey16.png").mode.startswith("I")


def test_loading_goes_to_the_end_and_counts_everything(bad, tmp_path, processor, tiny_tokenizer):
    convert(bad, bad.parent, tmp_path / "shards", shard_size=2, rules=RULES, echo=lambda s: None)
    dm, batches = run_epoch(tmp_path / "shards", processor, tiny_tokenizer.pad_token_id)
    assert {i for b in batches for i in b.ids} == TRAINED
    for b in batches:  # the non-RGB ones are normalised RGB tensors like any other
        assert b.pixel_values is None or b.pixel_values.shape[1:] == (3, 28, 28)
    c = dm.counts()
    assert c["data/records_in"] == 19 and c["data/converted"] == 7 and c["data/rejected"] == 12
    assert c["data/rejected_corrupt_image"] == 2 and c["data/empty_shards"] == 1
    assert c["data/planned"] == c["data/trained"] == 7 and c["data/skipped"] == 0
    assert c["data/over_length"] == 1  # 16 image tokens + the long reply > 512: truncated in the model, counted


def test_unverified_shards_skip_bad_images_at_load_time(bad, tmp_path, processor, tiny_tokenizer):
    out = tmp_path / "raw-shards"
    report = convert(bad, bad.parent, out, shard_size=2, rules=RULES, verify_images=False, echo=lambda s: None)
    assert report["converted"] == 9 and "corrupt_image" not in report["rejected_by_reason"]
    (out / "shard-000004.tar").unlink()  # a shard lost after conversion: its samples are skipped, not fatal
    lost = set(Manifest.load(out).ids[i] for i, s in enumerate(Manifest.load(out).shards) if s == "shard-000004.tar")
    dm, batches = run_epoch(out, processor, tiny_tokenizer.pad_token_id)
    skipped = sum((b.skipped for b in batches), Counter())
    assert skipped == Counter(corrupt_image=2, unreadable_shard=len(lost))
    assert {i for b in batches for i in b.ids} == TRAINED - lost
    c = dm.counts()
    assert c["data/planned"] == 9 == c["data/trained"] + c["data/skipped"]
    assert c["data/skipped_corrupt_image"] == 2 and c["data/skipped_unreadable_shard"] == len(lost)


@pytest.mark.slow
def test_bad_fixture_trains_to_the_end(bad, tmp_path, processor, tiny_tokenizer, tiny_model):
    import lightning as L

    from lmm.training.module import LlavaLitModule

    out = tmp_path / "raw-shards"
    convert(bad, bad.parent, out, shard_size=2, rules=RULES, verify_images=False, echo=lambda s: None)
    cfg = {"num_workers": 2, "finetune": {"shards": str(out), "rules": RULES}}
    dm = build_datamodule(cfg, "finetune", processor, 2, 1, tiny_tokenizer.pad_token_id, 0,
                          num_image_tokens=16, max_length=tiny_model.max_length)  # 28 px / patch 7 → 16 tokens
    module = LlavaLitModule(tiny_model, ["connector", "llm"], lr=1e-3)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(tmp_path)).fit(module, datamodule=dm)
    assert module.samples_seen == 9 - 2 and module.skipped == Counter(corrupt_image=2)
    assert module.truncated == 1 and dm.counts()["data/over_length"] == 1
    assert module.last_loss is not None
