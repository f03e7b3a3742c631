"""Issue 22 item 5: failures that come early and in our words. Every input a training run reads (weights, tokenizer,
data, connector files, the benchmarks evaluated after training) is checked before any model is built — offline, a
hub id counts only when it is in the Hugging Face cache — and every missing one is named at once with what provides
it; under ``plan=true`` they are a warning section above the plan. An unknown source name in the data config is an
error naming the known ones. The entry points print a config or input error as one line and exit 2."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, compose_train
from hydra import compose, initialize_config_dir

from lmm.data.mixture import mixture_from_cfg
from lmm.data.sources import UnknownSourceError
from lmm.training.input_checks import InputError, MissingInputsError
from lmm.training.inputs import check_config, check_inputs, missing_inputs

CLIP, VICUNA = "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5"


def paper_cfg(root, *overrides):
    """LLaVA-1.5-7B at paper scale with its files (playground/data, playground/data/eval) under ``root``."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["+experiment=llava_v1_5_7b", "scale=paper", f"paths.root_dir={root}",
                                           f"paths.output_dir={root}/run", f"paths.cache_dir={root}/cache",
                                           f"logger.tracking_uri=sqlite:///{root}/mlflow.db", *overrides])


def cache_repo(hub, repo_id, *files):
    """A hub repo as the Hugging Face cache holds it (refs/main → snapshots/<commit>/<file>)."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    for name in files:
        (repo / "snapshots" / "0123abcd" / name).write_text("{}")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def lay_out_llava_data(root, skip=()):
    """The official playground/data layout (README "Train"), empty files and folders, and playground/data/eval."""
    data = root / "playground" / "data"
    (data / "LLaVA-Pretrain" / "images").mkdir(parents=True)
    (data / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json").write_text("[]")
    (data / "llava_v1_5_mix665k.json").write_text("[]")
    for folder in ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K"):
        if folder.split("/")[0] not in skip:
            (data / folder).mkdir(parents=True)
    (data / "eval").mkdir()


def test_a_paper_run_without_its_files_names_every_missing_input_with_its_fix(tmp_path, hub):
    cfg = paper_cfg(tmp_path)
    missing = missing_inputs(cfg)
    by_key = {m.input.key: str(m) for m in missing}
    assert set(by_key) == {"model.vision.name_or_path", "model.llm.name_or_path", "data.pretrain.json",
                           "data.pretrain.image_folder", "data.finetune.json", "data.finetune.image_folder",
                           "eval.data_root"}
    assert f"hf download {CLIP}" in by_key["model.vision.name_or_path"]
    assert f"hf download {VICUNA}" in by_key["model.llm.name_or_path"] and "HF_HUB_OFFLINE" in by_key[
        "model.llm.name_or_path"]
    assert "hf download liuhaotian/LLaVA-Pretrain blip_laion_cc_sbu_558k.json --repo-type dataset" in by_key[
        "data.pretrain.json"]
    assert "hf download liuhaotian/LLaVA-Instruct-150K llava_v1_5_mix665k.json" in by_key["data.finetune.json"]
    assert "docs/data.md" in by_key["data.finetune.image_folder"] and "eval.after_training=false" in by_key[
        "eval.data_root"]
    with pytest.raises(MissingInputsError) as err:  # one error, every input in it, one line each
        check_inputs(cfg)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("7 inputs of this run are missing") and len(lines) == 8
    assert all(" — " in line for line in lines[1:])


def test_inputs_that_are_present_are_not_listed(tmp_path, hub):
    cache_repo(hub, CLIP, "config.json")
    cache_repo(hub, VICUNA, "config.json", "tokenizer_config.json")
    lay_out_llava_data(tmp_path, skip=("ocr_vqa",))
    missing = missing_inputs(paper_cfg(tmp_path))
    assert [m.input.key for m in missing] == ["data.finetune.image_folder"]  # only OCR-VQA's images
    assert "ocr_vqa" in str(missing[0]) and "data.finetune.sources.ocrvqa.include=false" in str(missing[0])
    check_inputs(paper_cfg(tmp_path, "data.finetune.sources.ocrvqa.include=false"))  # nothing missing: no error


def test_local_folders_connector_files_and_shards_are_checked_too(tmp_path, hub):
    lay_out_llava_data(tmp_path)
    tower = tmp_path / "clip"
    tower.mkdir()  # a folder without config.json is not a model
    cache_repo(hub, VICUNA, "config.json")  # no tokenizer files
    cfg = paper_cfg(tmp_path, f"model.vision.name_or_path={tower}", f"data.finetune.shards={tmp_path}/nothing",
                    "data.pretrain.shards=s3:/bucket", f"stages.finetune.init_connector={tmp_path}/mm_projector.bin")
    by_key = {m.input.key: str(m) for m in missing_inputs(cfg)}
    assert set(by_key) == {"model.vision.name_or_path", "model.llm.name_or_path", "data.finetune.shards",
                           "data.pretrain.shards", "stages.finetune.init_connector"}
    assert "no config.json" in by_key["model.vision.name_or_path"]
    assert "tokenizer_config.json" in by_key["model.llm.name_or_path"]
    assert "manifest.jsonl" in by_key["data.finetune.shards"] and "make shards" in by_key["data.finetune.shards"]
    assert "not a URL" in by_key["data.pretrain.shards"]


def test_a_real_run_fails_before_any_folder_model_or_mlflow_run(tmp_path, hub):
    from lmm.pipeline import train

    with pytest.raises(MissingInputsError, match="inputs of this run are missing"):
        train(paper_cfg(tmp_path))
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_plan_still_prints_with_the_missing_inputs_as_a_warning_section(tmp_path, hub, capsys):
    from lmm.pipeline import train

    result = train(paper_cfg(tmp_path, "plan=true"))
    out = capsys.readouterr().out
    assert "plan" in result and "memory per GPU" in out
    warning = out[:out.index("memory per GPU")]
    assert "warning: 7 inputs of this run are missing" in warning and f"hf download {VICUNA}" in warning


def test_a_tiny_runs_prepared_config_has_no_missing_input(tmp_path):
    from lmm.synth.world import prepare_training

    cfg = compose_train(f"paths.output_dir={tmp_path}/run")
    assert missing_inputs(cfg, prepared=False) == []  # what prepare_training writes is not asked for in a plan
    prepare_training(cfg)
    assert missing_inputs(cfg) == []


def test_an_unknown_source_name_is_an_error_naming_the_known_ones():
    with pytest.raises(UnknownSourceError, match=r"data\.finetune\.sources\.vqa2: .*known.*vqav2") as err:
        check_config(compose_train("paths.output_dir=/tmp/unused", "+data.finetune.sources.vqa2={include:true}"))
    assert "llava_instruct" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnknownSourceError, match="'vqa2'"):
        mixture_from_cfg({"json": "x.json", "sources": {"vqa2": {}}})
    # a source a custom rule names is known; so is `unknown` when unmatched records are tagged
    m = mixture_from_cfg({"json": "x.json", "rules": [{"source": "charts", "id_prefix": "chart-"}],
                          "unknown_source": "tag", "sources": {"charts": {}, "unknown": {"include": False}}})
    assert set(m.sources) == {"charts", "unknown"}


def test_config_mistakes_are_named_before_anything_runs():
    with pytest.raises(InputError, match=r"stages\.finetune\.lr: a value is required"):
        check_config(compose_train("paths.output_dir=/tmp/unused", "stages.finetune.lr=???"))
    with pytest.raises(InputError, match=r"run_stages: unknown stage 'finetun'.*pretrain, finetune"):
        check_config(compose_train("paths.output_dir=/tmp/unused", "run_stages=[finetun]"))
    with pytest.raises(InputError, match=r"data\.finetune: unknown key\(s\) \['shard'\]"):
        check_config(compose_train("paths.output_dir=/tmp/unused", "+data.finetune.shard=x"))


def run_entry(script, *args, **env):
    res = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    return res.returncode, [line for line in res.stderr.splitlines() if line.strip()], res.stderr


def test_eval_without_a_checkpoint_prints_one_line_and_exits_2():
    rc, lines, _ = run_entry("eval.py")
    assert rc == 2 and lines == ["error: checkpoint= is required: the model folder or training run to score, e.g. "
                                 "python eval.py checkpoint=outputs/<run>"]
    rc, lines, _ = run_entry("eval.py", "checkpoint=outputs/no-such-run")
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: checkpoint: outputs/no-such-run")


def test_train_with_a_config_mistake_prints_one_line_and_exits_2(tmp_path):
    rc, lines, _ = run_entry("train.py", "stages.finetune.lrr=1")
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: stages.finetune.lrr: not a key of the config") and "+stages.finetune.lrr=1" in \
        lines[0]
    rc, lines, _ = run_entry("train.py", "scale=huge")
    assert rc == 2 and lines == ["error: scale=huge: no such option — the options of scale: paper, tiny"]
    rc, lines, _ = run_entry("train.py", "stages.finetune.lr=[1")
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: stages.finetune.lr=[1: Hydra cannot parse")
    rc, lines, _ = run_entry("train.py", "stages.finetune.lr=???", "plan=true", f"hydra.run.dir={tmp_path}/plan")
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: stages.finetune.lr: a value is required")


def test_omegaconf_errors_become_one_line_naming_the_key(monkeypatch):
    from omegaconf import OmegaConf

    from lmm.pipeline import error_line

    monkeypatch.delenv("LMM_NO_SUCH_VAR", raising=False)
    cfg = OmegaConf.create({"stages": {"finetune": {"lr": "???", "wd": "${oc.env:LMM_NO_SUCH_VAR}"}}})
    OmegaConf.set_struct(cfg, True)
    lines = []
    for read in (lambda: cfg.stages.finetune.lr, lambda: cfg.stages.finetune.wd, lambda: cfg.stages.finetune.lrr):
        with pytest.raises(Exception) as err:
            read()
        lines.append(error_line(err.value, "train.py"))
    assert lines[0] == ("error: stages.finetune.lr: a value is required (??? in the config) — set it on the command "
                        "line: stages.finetune.lr=<value>")
    assert lines[1].startswith("error: stages.finetune.wd: ") and "LMM_NO_SUCH_VAR" in lines[1] and "\n" not in lines[1]
    assert lines[2] == ("error: stages.finetune.lrr: not a key of the config — check its spelling (python train.py "
                        "--cfg job prints the config)")
    assert error_line(RuntimeError("a bug")) is None  # anything else keeps its traceback


def test_developers_still_get_the_traceback():
    rc, _, err = run_entry("eval.py", LMM_TRACEBACK="1")
    assert rc != 0 and "Traceback" in err and "checkpoint= is required" in err


def test_every_error_class_printed_as_one_line_exists():
    import importlib

    from lmm.pipeline import ONE_LINE_ERRORS

    for module, name in ONE_LINE_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)
