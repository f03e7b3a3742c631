"""Stage reuse: which stages share a key (Table 2's rows 0–2 / 3–5 / 6–8 share stage 1), what does not enter the key,
and how a finished stage is linked into a new run folder."""

import json

import pytest
from conftest import compose_train
from omegaconf import open_dict

from lmm.training.reuse import record, reuse, reuse_tags, stage_key


def row(name, *overrides):
    return compose_train(f"+experiment={name}", "paths.output_dir=/tmp/x", *overrides)


@pytest.fixture(scope="module")
def rows():
    names = ["row0_llava", "row1_vqav2", "row2_format_prompt", "row3_mlp_connector", "row6_res336", "row9_13b"]
    return {n: row(n) for n in names}


def test_table2_rows_share_stage1_by_group(rows):
    pre = {n: stage_key(c, "pretrain") for n, c in rows.items()}
    assert pre["row0_llava"] == pre["row1_vqav2"] == pre["row2_format_prompt"]
    assert len({pre["row0_llava"], pre["row3_mlp_connector"], pre["row6_res336"], pre["row9_13b"]}) == 4
    fine = {n: stage_key(c, "finetune") for n, c in rows.items()}
    assert len(set(fine.values())) == len(fine)  # every row's stage 2 is its own


def test_what_does_not_change_a_stage_is_not_in_its_key(rows):
    base = stage_key(rows["row0_llava"], "pretrain")
    same = row("row0_llava", "data.num_workers=7", "logger.tags.experiment=renamed", "checkpoint.keep_last=5",
               "eval.benchmarks=[gqa]", "stages.finetune.lr=1e-4", "stages.pretrain.compile.enabled=true",
               "stages.pretrain.compile.backend=aot_eager")  # torch.compile: the same computation, faster
    assert stage_key(same, "pretrain") == base
    for change in ("seed=1", "stages.pretrain.lr=1e-4", "data.pretrain.subsample=0.5", "model.max_length=256"):
        assert stage_key(row("row0_llava", change), "pretrain") != base, change
    # stage 2 depends on stage 1: a changed stage 1 changes the stage-2 key too
    assert stage_key(row("row0_llava", "stages.pretrain.lr=1e-4"), "finetune") != stage_key(rows["row0_llava"],
                                                                                            "finetune")


def test_a_finished_stage_is_linked_not_retrained(tmp_path, rows):
    cfg = rows["row0_llava"].copy()
    with open_dict(cfg):
        cfg.stage_reuse.enabled, cfg.stage_reuse.index = True, str(tmp_path / "index")
    first = tmp_path / "run1" / "pretrain"
    first.mkdir(parents=True)
    for f in ("last.ckpt", "connector.safetensors"):
        (first / f).write_bytes(b"weights")
    (first / "stage_done.json").write_text(json.dumps({"steps": 3}))
    assert reuse(cfg, "pretrain", tmp_path / "run0" / "pretrain") is None  # nothing recorded yet
    record(cfg, "pretrain", first, "run-abc")
    second = tmp_path / "run2" / "pretrain"
    info = reuse(cfg, "pretrain", second)
    assert info["source_dir"] == str(first.resolve()) and info["mlflow_run_id"] == "run-abc"
    assert (second / "last.ckpt").resolve() == (first / "last.ckpt").resolve()
    assert json.loads((second / "reused_from.json").read_text())["key"] == stage_key(cfg, "pretrain")
    assert reuse_tags({"pretrain": info}) == {"reused.pretrain.run_id": "run-abc",
                                              "reused.pretrain.dir": str(first.resolve())}
    record(cfg, "pretrain", second, "run-def")  # a reused stage never re-points the index at itself
    assert reuse(cfg, "pretrain", tmp_path / "run3" / "pretrain")["source_dir"] == str(first.resolve())
    with open_dict(cfg):
        cfg.stage_reuse.enabled = False
    assert reuse(cfg, "pretrain", tmp_path / "run4" / "pretrain") is None
