"""Mixture config parsing and the per-source response-format prompt policy (keep / strip / replace)."""

import pytest

from lmm.data.mixture import FormatPromptPolicy, SourcedRecord, SourceSpec, mixture_from_cfg
from lmm.data.records import parse_record
from lmm.text.prompts import OPTION_LETTER, SHORT_ANSWER


def vqa_record(source="vqav2"):
    r = parse_record({"id": "q1", "image": "coco/1.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nWhat color is the bus?\n{SHORT_ANSWER}"}, {"from": "gpt", "value": "Red"},
        {"from": "human", "value": f"How many wheels?\n{SHORT_ANSWER}"}, {"from": "gpt", "value": "4"}]})
    return SourcedRecord(**vars(r), source=source)


def test_strip_keep_replace():
    rec = vqa_record()
    strip = FormatPromptPolicy({"vqav2": SourceSpec("vqav2", format_prompt="strip")})
    assert strip(rec).turns == [("<image>\nWhat color is the bus?", "Red"), ("How many wheels?", "4")]
    assert strip(rec).raw is rec.raw and strip(rec).source == "vqav2"
    assert rec.turns[0][0].endswith(SHORT_ANSWER)  # the record itself is untouched
    assert strip(vqa_record("gqa")).turns == vqa_record("gqa").turns  # other sources pass through
    keep = FormatPromptPolicy({"vqav2": SourceSpec("vqav2", format_prompt="keep")})
    assert keep(rec) is rec
    rep = FormatPromptPolicy({"vqav2": SourceSpec("vqav2", format_prompt="replace", replacement="One word.")})
    assert rep(rec).turns[1][0] == "How many wheels?\nOne word."


def test_spec_validation():
    with pytest.raises(ValueError, match="no known response-format suffix"):
        SourceSpec("llava_instruct", format_prompt="strip")
    assert SourceSpec("llava_instruct", format_prompt="strip", format_suffix="Be brief.").suffix == "Be brief."
    assert SourceSpec("aokvqa").suffix == OPTION_LETTER
    with pytest.raises(ValueError, match="format_prompt must be"):
        SourceSpec("vqav2", format_prompt="drop")
    with pytest.raises(ValueError, match="replacement"):
        SourceSpec("vqav2", format_prompt="replace")


def test_mixture_from_cfg():
    from omegaconf import OmegaConf

    m = mixture_from_cfg(OmegaConf.create({"shards": "/x", "subsample": 0.3, "sources": {
        "vqav2": {"format_prompt": "strip", "count": 82783}, "sharegpt": {"include": False}}}))
    assert m.subsample == 0.3 and m.include_map() == {"vqav2": True, "sharegpt": False}
    assert m.policy() is not None and mixture_from_cfg({"shards": "/x"}).policy() is None
    with pytest.raises(ValueError, match="unknown key"):
        mixture_from_cfg({"shards": "/x", "subsampel": 0.3})
    with pytest.raises(ValueError, match="unknown key"):
        mixture_from_cfg({"shards": "/x", "sources": {"vqav2": {"weigth": 2}}})
    with pytest.raises(ValueError, match="needs 'shards'"):
        mixture_from_cfg({})
