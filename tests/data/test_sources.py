"""Source tagging of the 665K mixture by image folder and prompt text (spec §2.2), overrides and unknown sources."""

import json

import pytest

from lmm.data.records import RecordError, parse_record
from lmm.data.sources import REGION_BBOX, REGION_DESCRIPTION, SourceTagger, parse_rules
from lmm.text.prompts import ONE_SENTENCE_CAPTION, OPTION_LETTER, SHORT_ANSWER


def rec(q, image=None, a="x", sid="000000033471"):
    r = {"id": sid, "conversations": [{"from": "human", "value": ("<image>\n" if image else "") + q},
                                      {"from": "gpt", "value": a}]}
    if image:
        r["image"] = image
    return parse_record(r)


CASES_665K = [
    (rec("What is unusual about this image?", "coco/train2017/000000033471.jpg"), "llava_instruct"),
    (rec("Write a haiku about spring."), "sharegpt"),
    (rec(f"What color is the bus?\n{SHORT_ANSWER}", "coco/train2017/000000000009.jpg"), "vqav2"),
    (rec(f"Is the sky blue?\n{SHORT_ANSWER}", "gqa/images/2354786.jpg"), "gqa"),
    (rec(f"Who wrote this book?\n{SHORT_ANSWER}", "ocr_vqa/images/1234567.jpg"), "ocrvqa"),
    (rec(f"What is it used for?\nA. cut\nB. eat\n{OPTION_LETTER}", "coco/train2017/000000000025.jpg"), "aokvqa"),
    (rec(ONE_SENTENCE_CAPTION, "textvqa/train_images/0a0bc91825468c45.jpg"), "textcaps"),
    (rec(f"{REGION_DESCRIPTION} [0.32, 0.8, 0.59, 1.0].", "coco/train2017/000000000030.jpg"), "refcoco"),
    (rec(f"{REGION_BBOX} a man in red.", "coco/train2017/000000000030.jpg", "[0.21, 0.92, 0.36, 1.0]"), "refcoco"),
    (rec(f"{REGION_DESCRIPTION} [0.1, 0.2, 0.3, 0.4].", "vg/VG_100K/2356347.jpg"), "vg"),
    (rec(f"{REGION_BBOX} a tree.", "vg/VG_100K_2/1.jpg", "[0.1, 0.2, 0.3, 0.4]"), "vg"),
]


@pytest.mark.parametrize("record,source", CASES_665K, ids=[s for _, s in CASES_665K])
def test_665k_rules(record, source):
    assert SourceTagger("llava_mix665k")(record) == source


def test_unknown_source_rejected_or_tagged():
    r = rec("What is this?", "flickr/123.jpg", sid="odd-1")
    with pytest.raises(RecordError) as e:
        SourceTagger("llava_mix665k")(r)
    assert e.value.reason == "unknown_source" and e.value.sample_id == "odd-1" and "flickr/123.jpg" in str(e.value)
    assert SourceTagger("llava_mix665k", unknown="tag")(r) == "unknown"
    assert SourceTagger(None)(r) == "unknown"


def test_rules_are_overridable_from_config_and_files(tmp_path):
    okvqa = rec(f"Why?\n{SHORT_ANSWER}", "coco/train2017/1.jpg", sid="okvqa_17")
    tagger = SourceTagger([{"source": "okvqa", "id_regex": "^okvqa_"}, {"extends": "llava_mix665k"}])
    assert tagger(okvqa) == "okvqa"
    assert tagger(rec(f"Why?\n{SHORT_ANSWER}", "coco/train2017/1.jpg")) == "vqav2"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"source": "flickr", "image_prefix": ["flickr/", "f30k/"]}]))
    assert SourceTagger(str(path))(rec("Q", "f30k/9.jpg")) == "flickr"
    (tmp_path / "rules.yaml").write_text("- source: docs\n  prompt_contains: [invoice]\n")
    assert SourceTagger(str(tmp_path / "rules.yaml"))(rec("Read this invoice", "x/1.jpg")) == "docs"
    with pytest.raises(ValueError, match="unknown field"):
        parse_rules([{"source": "a", "image_prefx": "x/"}])
    with pytest.raises(ValueError, match="unknown source rule set"):
        parse_rules("llava_mix999k")


def test_synthetic_rules_follow_id_prefixes():
    tag = SourceTagger("synthetic")
    assert tag(rec("Q", "inst/1.png", sid="vqa-3")) == "vqav2"
    assert tag(rec("Q", sid="text-2")) == "sharegpt"
    assert tag(rec("Q", "cap/1.png", sid="cap-0")) == "lcs558k"
    assert tag(rec("Q", "x/1.png", sid="gqa-7")) == "gqa"
