"""The tiny world's stage-2 source rules, as a real user's override of the 665K's: the synthetic 665K twin's
OKVQA-like records are tagged ``okvqa`` by an id rule placed before the built-in rules (the real mixture's OKVQA
samples share VQAv2's images and suffix, so only such a rule can name them), and Table 2's rows include or exclude
them as their configs say."""

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import compose_train

from lmm.common import plain
from lmm.data.datamodule import build_datamodule
from lmm.data.records import parse_record
from lmm.data.sources import SourceTagger, source_counts
from lmm.synth import write_twin
from lmm.synth.basic import write_synthetic
from lmm.synth.world import twin_spec

N_FINETUNE = 300
TWIN = ["data.twin.n_pretrain=4", f"data.twin.n_finetune={N_FINETUNE}", "data.twin.image_size=24"]


def row_cfg(row, cache):
    return compose_train(f"+experiment={row}", f"paths.cache_dir={cache}", "paths.output_dir=/tmp/unused", *TWIN)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("twin_rules")
    write_twin(twin_spec(plain(row_cfg("row0_llava", cache).data)))
    return cache


def test_tiny_rules_tag_okvqa_like_records_okvqa(cache):
    cfg = row_cfg("row0_llava", cache)
    rules = plain(cfg.data.finetune.rules)
    assert isinstance(rules, list) and {"extends": "llava_mix665k"} in rules  # an override of the built-in set
    mix = json.loads((Path(cfg.data.root) / "llava_v1_5_mix665k.json").read_text())
    tag = SourceTagger(rules, cfg.data.finetune.unknown_source)
    tagged = {r["id"]: tag(parse_record(r)) for r in mix}
    okvqa = [i for i in tagged if i.startswith("okvqa-")]
    assert len(okvqa) == source_counts(N_FINETUNE)["okvqa"] > 0
    assert {tagged[i] for i in okvqa} == {"okvqa"}
    assert Counter(tagged.values()) == source_counts(N_FINETUNE)  # and every other source as the built-in rules
    builtin = SourceTagger("llava_mix665k")  # which cannot tell them from VQAv2 (the real mixture's limit)
    assert {builtin(parse_record(r)) for r in mix if r["id"].startswith("okvqa-")} == {"vqav2"}


@pytest.mark.parametrize("row,okvqa,vqav2", [("row0_llava", False, False), ("row1_vqav2", False, True),
                                             ("row4_okvqa_ocr", True, True)])
def test_rows_include_okvqa_as_their_configs_say(cache, processor, tiny_tokenizer, row, okvqa, vqav2):
    cfg = row_cfg(row, cache)
    dm = build_datamodule(cfg.data, "finetune", processor, 4, 1, tiny_tokenizer.pad_token_id, 0, num_workers=0)
    dm.setup()  # converts the twin once (the rules are the same for every row, so is the shard folder)
    selected = dm.manifest.source_counts(dm.selected)
    expected = source_counts(N_FINETUNE)
    assert selected.get("okvqa", 0) == (expected["okvqa"] if okvqa else 0)
    assert selected.get("vqav2", 0) == (expected["vqav2"] if vqav2 else 0)  # VQAv2's own records only
    include = {s for s, spec in cfg.data.finetune.sources.items() if spec.get("include", True)}
    assert selected == {s: n for s, n in expected.items() if s in include}


def test_tiny_rules_still_tag_the_basic_world(tmp_path):
    """``data=synthetic_shards`` at ``scale=tiny``: the small test world's records (ids ``vqa-`` / ``conv-`` /
    ``text-``, images outside the official folders) are tagged as by its own ``synthetic`` rules."""
    cfg = compose_train("data=synthetic_shards", f"paths.cache_dir={tmp_path}", "paths.output_dir=/tmp/unused")
    paths = write_synthetic(tmp_path / "basic", n_pretrain=2, n_finetune=24, image_size=16, seed=0)
    records = [parse_record(r) for r in json.loads(Path(paths["finetune"]).read_text())]
    tiny, own = SourceTagger(plain(cfg.data.finetune.rules)), SourceTagger("synthetic")
    assert [tiny(r) for r in records] == [own(r) for r in records]
    assert {own(r) for r in records} == {"vqav2", "llava_instruct", "sharegpt"}
