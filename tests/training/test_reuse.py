"""Stage reuse: which stages share a key (Table 2's rows 0–2 / 3–5 / 6–8 share stage 1), what does and does not enter
the key (the stage data's content does), and how a finished stage is hard-linked into a new run folder."""

import functools
import http.server
import json
import shutil
import threading

import pytest
import torch
from conftest import compose_train
from omegaconf import open_dict

from lmm.training.checkpointing import atomic_torch_save
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
    same = row("row0_llava", "data.num_workers=7", "logger.tags.experiment=renamed", "checkpointing.keep_last=5",
               "eval.benchmarks=[gqa]", "stages.finetune.lr=1e-4", "stages.pretrain.compile.enabled=true",
               "stages.pretrain.compile.backend=aot_eager")  # torch.compile: the same computation, faster
    assert stage_key(same, "pretrain") == base
    for change in ("seed=1", "stages.pretrain.lr=1e-4", "data.pretrain.subsample=0.5", "model.max_length=256"):
        assert stage_key(row("row0_llava", change), "pretrain") != base, change
    # stage 2 depends on stage 1: a changed stage 1 changes the stage-2 key too
    assert stage_key(row("row0_llava", "stages.pretrain.lr=1e-4"), "finetune") != stage_key(rows["row0_llava"],
                                                                                            "finetune")


def finished_stage(stage, cfg, name="pretrain"):
    """A finished stage's files (real weights, a model folder), its stage_done.json holding its key."""
    stage.mkdir(parents=True)
    atomic_torch_save({"state_dict": {"model.connector.w": torch.arange(4.0)}, "loops": {}}, stage / "last.ckpt")
    (stage / "connector.safetensors").write_bytes(b"connector")
    (stage / "model" / "tokenizer").mkdir(parents=True)
    (stage / "model" / "model.safetensors").write_bytes(b"weights")
    (stage / "model" / "tokenizer" / "tokenizer.model").write_bytes(b"spm")
    (stage / "stage_done.json").write_text(json.dumps({"steps": 3, "reuse_key": stage_key(cfg, name)}))
    return stage


@pytest.fixture
def reuse_cfg(tmp_path, rows):
    cfg = rows["row0_llava"].copy()
    with open_dict(cfg):
        cfg.stage_reuse.enabled, cfg.stage_reuse.index = True, str(tmp_path / "index")
    return cfg


def test_a_finished_stage_is_taken_whole_and_survives_its_source(tmp_path, reuse_cfg):
    cfg = reuse_cfg
    first = finished_stage(tmp_path / "run1" / "pretrain", cfg)
    assert reuse(cfg, "pretrain", tmp_path / "run0" / "pretrain") is None  # nothing recorded yet
    record(cfg, "pretrain", first, "run-abc")
    second = tmp_path / "run2" / "pretrain"
    info = reuse(cfg, "pretrain", second)
    assert info["source_dir"] == str(first.resolve()) and info["mlflow_run_id"] == "run-abc"
    files = ["last.ckpt", "connector.safetensors", "stage_done.json", "model/model.safetensors",
             "model/tokenizer/tokenizer.model"]
    for f in files:  # hard links (or copies), never symlinks into the other run
        assert not (second / f).is_symlink() and (second / f).read_bytes() == (first / f).read_bytes(), f
    assert (second / "last.ckpt").stat().st_ino == (first / "last.ckpt").stat().st_ino  # same file system: linked
    assert json.loads((second / "reused_from.json").read_text())["key"] == stage_key(cfg, "pretrain")
    assert reuse(cfg, "pretrain", second) == info  # idempotent: another rank of the same run gets the same
    assert reuse_tags({"pretrain": info}) == {"reused.pretrain.run_id": "run-abc",
                                              "reused.pretrain.dir": str(first.resolve())}
    record(cfg, "pretrain", second, "run-def")  # a reused stage never re-points the index at itself
    assert reuse(cfg, "pretrain", tmp_path / "run3" / "pretrain")["source_dir"] == str(first.resolve())
    shutil.rmtree(tmp_path / "run1")  # the source run deleted: the reusing run's files are whole and load
    assert torch.load(second / "last.ckpt", weights_only=True)["state_dict"]["model.connector.w"].tolist() == \
        [0.0, 1.0, 2.0, 3.0]
    assert (second / "model" / "tokenizer" / "tokenizer.model").read_bytes() == b"spm"
    assert reuse(cfg, "pretrain", tmp_path / "run4" / "pretrain") is None  # the recorded source is gone
    with open_dict(cfg):
        cfg.stage_reuse.enabled = False
    assert reuse(cfg, "pretrain", tmp_path / "run5" / "pretrain") is None


def test_only_a_finished_stage_under_the_same_key_is_taken(tmp_path, reuse_cfg):
    cfg = reuse_cfg
    first = finished_stage(tmp_path / "run1" / "pretrain", cfg)
    record(cfg, "pretrain", first, "run-abc")
    done = json.loads((first / "stage_done.json").read_text())
    (first / "stage_done.json").write_text(json.dumps({**done, "reuse_key": "another"}))  # the folder ran again
    assert reuse(cfg, "pretrain", tmp_path / "run2" / "pretrain") is None
    (first / "stage_done.json").unlink()  # unfinished
    assert reuse(cfg, "pretrain", tmp_path / "run3" / "pretrain") is None
    unfinished = tmp_path / "run4" / "pretrain"
    unfinished.mkdir(parents=True)
    record(cfg, "pretrain", unfinished, "run-x")  # no stage_done.json (a failed stage): never recorded
    assert not list((tmp_path / "index").glob("*run-x*")) and len(list((tmp_path / "index").iterdir())) == 1


def test_the_key_follows_the_content_of_the_stages_data(tmp_path, rows):
    shards = tmp_path / "shards"
    shards.mkdir()
    manifest = shards / "manifest.jsonl"
    manifest.write_text('{"key": "a"}\n')
    base = row("row0_llava", f"data.pretrain.shards={shards}")
    k1 = stage_key(base, "pretrain")
    assert k1 != stage_key(rows["row0_llava"], "pretrain")
    manifest.write_text('{"key": "b"}\n')  # same folder, other data
    k2 = stage_key(base, "pretrain")
    assert k2 != k1 and stage_key(base, "finetune") != stage_key(row("row0_llava"), "finetune")
    manifest.write_text('{"key": "a"}\n')  # the same bytes again, a new mtime
    assert stage_key(base, "pretrain") == k1
    source = tmp_path / "pretrain.json"  # converted on demand: the JSON's content
    source.write_text("[]")
    j1 = stage_key(row("row0_llava", f"data.pretrain.json={source}"), "pretrain")
    source.write_text('[{"id": "1"}]')
    assert stage_key(row("row0_llava", f"data.pretrain.json={source}"), "pretrain") != j1


def test_a_manifest_behind_a_url_is_fetched_and_hashed(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.jsonl").write_text('{"key": "a"}\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shards"
        k1 = stage_key(row("row0_llava", f"data.pretrain.shards={url}"), "pretrain")
        (shards / "manifest.jsonl").write_text('{"key": "b"}\n')
        assert stage_key(row("row0_llava", f"data.pretrain.shards={url}"), "pretrain") != k1
    finally:
        server.shutdown()
        server.server_close()
