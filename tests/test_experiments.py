"""Every paper experiment by name: each composes to the paper's settings, and each runs at tiny scale."""

import subprocess
import sys

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ROWS = [f"row{i}_" for i in range(10)]


def cfg_of(name, *overrides, scale="paper"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={name}", f"scale={scale}", f"paths.root_dir={REPO}",
                                          "paths.output_dir=/tmp/unused", *overrides])
    return cfg


def sources(cfg):
    return {s for s, spec in cfg.data.finetune.sources.items() if spec.get("include", True)}


def test_every_paper_row_and_final_model_has_an_experiment():
    for prefix in ROWS:
        assert any(e.startswith(prefix) for e in EXPERIMENTS), prefix
    assert {"llava_v1_5_7b", "llava_v1_5_13b", "llava_v1_5_7b_lora", "llava_v1_5_13b_lora", "qformer",
            "llava_v1_5_13b_hd", "hd_7b_global_context", "hd_7b_patch_only"} <= set(EXPERIMENTS)


def test_rows_match_the_paper():
    c = {e: cfg_of(e) for e in EXPERIMENTS}
    # Shared official recipe (scripts/v1_5/*.sh) on every row.
    for e, cfg in c.items():
        linear = e in ("row0_llava", "row1_vqav2", "row2_format_prompt")  # the original LLaVA's stage 1 (pretrain.sh)
        assert (cfg.stages.pretrain.lr, cfg.stages.pretrain.global_batch_size) == ((2e-3, 128) if linear
                                                                                    else (1e-3, 256)), e
        assert (cfg.model.connector.name == "linear") == linear, e
        assert cfg.stages.finetune.global_batch_size == 128 and cfg.stages.finetune.epochs == 1, e
        assert cfg.stages.finetune.warmup_ratio == 0.03 and cfg.model.max_length == 2048, e
        assert cfg.stages.pretrain.template == "plain" and not cfg.model.twin, e
        assert cfg.logger.tags.experiment == e
    assert c["row0_llava"].model.connector.name == "linear"
    assert c["row0_llava"].model.vision.name_or_path == "openai/clip-vit-large-patch14"
    assert sources(c["row0_llava"]) == {"llava_instruct"}
    assert "vqav2" in sources(c["row1_vqav2"])
    assert c["row1_vqav2"].data.finetune.sources.vqav2.format_prompt == "strip"
    assert c["row2_format_prompt"].data.finetune.sources.vqav2.format_prompt == "keep"
    assert c["row2_format_prompt"].model.connector.name == "linear"
    assert c["row3_mlp_connector"].model.connector.name == "mlp2x_gelu"
    assert sources(c["row4_okvqa_ocr"]) - sources(c["row3_mlp_connector"]) == {"okvqa", "aokvqa", "ocrvqa",
                                                                               "textcaps"}
    assert sources(c["row5_region_vqa"]) - sources(c["row4_okvqa_ocr"]) == {"vg", "refcoco"}
    assert c["row5_region_vqa"].model.vision.name_or_path == "openai/clip-vit-large-patch14"
    assert c["row6_res336"].model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert "gqa" in sources(c["row7_gqa"]) and "gqa" not in sources(c["row6_res336"])
    assert "sharegpt" not in sources(c["row7_gqa"]) and "sharegpt" in sources(c["row8_sharegpt"])
    assert len(sources(c["row8_sharegpt"])) == 10  # the full 665K mixture
    assert c["row9_13b"].model.llm.name_or_path == "lmsys/vicuna-13b-v1.5"
    assert c["row8_sharegpt"].model.llm.name_or_path == "lmsys/vicuna-7b-v1.5"
    for e in ("llava_v1_5_7b", "llava_v1_5_13b"):
        assert c[e].stages.finetune.lr == 2e-5 and c[e].stages.finetune.lora is None
    lora = c["llava_v1_5_7b_lora"].stages.finetune
    assert (lora.lora.r, lora.lora.alpha, lora.lora.dropout, lora.lr, lora.connector_lr) == (128, 256, 0.05, 2e-4, 2e-5)
    assert c["llava_v1_5_13b_lora"].model.llm.name_or_path == "lmsys/vicuna-13b-v1.5"
    assert c["qformer"].model.connector.name == "qformer" and c["qformer"].model.connector.num_queries == 32
    hd = c["llava_v1_5_13b_hd"]
    assert hd.model.hd.enabled and hd.model.hd.global_context and hd.model.hd.max_cells == 6
    assert hd.model.vision.name_or_path == "openai/clip-vit-large-patch14" and not hd.stages.pretrain.hd
    assert c["hd_7b_global_context"].model.hd.global_context and not c["hd_7b_patch_only"].model.hd.global_context


def test_row7_at_paper_scale_cfg_job():
    """`python train.py +experiment=row7_gqa scale=paper --cfg job`: official names, 336 px, mlp2x_gelu, gqa."""
    out = subprocess.run([sys.executable, "train.py", "+experiment=row7_gqa", "scale=paper", "--cfg", "job"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job = OmegaConf.create(out.stdout)
    assert job.model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert job.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5" and job.model.connector.name == "mlp2x_gelu"
    assert job.stages.finetune.lr == 2e-5 and job.stages.finetune.global_batch_size == 128
    assert job.data.finetune.sources.gqa.include and not job.data.finetune.sources.sharegpt.include


def test_tiny_twins_keep_relative_sizes():
    from lmm.models.build import as_twin

    t7, t13 = (as_twin(OmegaConf.to_container(cfg_of(e).model.llm), "llm")["config"] for e in
               ("llava_v1_5_7b", "llava_v1_5_13b"))
    assert t13["hidden_size"] > t7["hidden_size"] and t13["num_hidden_layers"] >= t7["num_hidden_layers"]
    v224, v336 = (cfg_of(e).model.vision.twin for e in ("row5_region_vqa", "row6_res336"))
    assert (v336.image_size // v336.patch_size) > (v224.image_size // v224.patch_size)
    tiny = cfg_of("row7_gqa", scale="tiny")
    assert tiny.model.twin and tiny.data.twin.enabled and "synthetic" in tiny.data.root
    assert tiny.model.vision.name_or_path == "openai/clip-vit-large-patch14-336"  # structure unchanged


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_at_tiny_scale(name, tmp_path):
    """Plumbing: two steps per stage, random twins (the default ``twins=random``); the pretrained twins are the
    same code for every backbone config (synth/test_twins) and are trained end to end by the learning test."""
    from lmm.pipeline import train

    cfg = cfg_of(name, f"paths.output_dir={tmp_path}",
                 "data.twin.n_pretrain=16", "data.twin.n_finetune=48", "stages.pretrain.max_steps=2",
                 "stages.finetune.max_steps=2", "eval.benchmarks=[gqa]", "trainer.enable_progress_bar=false",
                 scale="tiny")
    result = train(cfg)
    assert set(result["stages"]) == {"pretrain", "finetune"}
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=result["tracking_uri"]).get_run(result["stages"]["finetune"]["mlflow_run_id"])
    assert run.data.params["model.connector.name"] == cfg.model.connector.name  # linear (row 0), qformer, mlp2x
    assert result["stages"]["finetune"]["steps"] == 2
    assert "score" in result["eval"]["results"]["gqa"]


@pytest.mark.parametrize("name", ["llava_v1_5_7b", "row9_13b", "row5_region_vqa"])
def test_twins_group_decides_what_is_pretrained(name):
    """`twins=random` (the default) pretrains nothing; `twins=pretrained` keeps each backbone config's settings,
    whichever LLM / tower the experiment chose."""
    rnd, pre = cfg_of(name, scale="tiny"), cfg_of(name, "twins=pretrained", scale="tiny")
    assert rnd.model.llm.twin.pretrain is None and rnd.model.vision.twin.pretrain is None
    assert pre.model.llm.twin.pretrain.steps == 1000 and pre.model.vision.twin.pretrain.steps == 800


def test_one_conversion_serves_every_experiment(tmp_path):
    """Shards depend on the data alone (JSON, image folder, source rules), never on the model: rows 0–9, HD, the
    Q-Former and LoRA at tiny scale stream the same two shard folders (stage 1, stage 2)."""
    from lmm.data.datamodule import build_datamodule
    from lmm.data.images import ImageTransform
    from lmm.data.processor import SampleProcessor
    from lmm.synth.world import prepare_training
    from lmm.text.templates import get_template
    from lmm.training.components import build_tokenizer

    folders = {"pretrain": set(), "finetune": set()}
    names = [n for n in EXPERIMENTS if n.startswith("row") or "hd" in n or "lora" in n or n == "qformer"]
    for name in names:
        cfg = prepare_training(cfg_of(name, f"paths.output_dir={tmp_path}", "data.twin.n_pretrain=16",
                                      "data.twin.n_finetune=48", scale="tiny"))
        tok = build_tokenizer(cfg)
        for stage in folders:
            proc = SampleProcessor(tok, get_template(cfg.stages[stage].template), ImageTransform(28))
            folders[stage].add(build_datamodule(cfg.data, stage, proc, 4, 1, tok.pad_token_id, 0).shard_dir)
    assert len(names) == 16 and all(len(f) == 1 for f in folders.values()), folders


def test_stage1_recipe_is_a_one_line_override():
    """Rows 0–2 with LLaVA-1.5's stage 1, and LLaVA-1.5-7B with the original LLaVA's; the tiny scale keeps its batch."""
    assert cfg_of("row0_llava", "stage@stages.pretrain=pretrain").stages.pretrain.lr == 1e-3
    v1 = cfg_of("llava_v1_5_7b", "stage@stages.pretrain=pretrain_llava_v1").stages.pretrain
    assert (v1.lr, v1.global_batch_size, v1.micro_batch_size) == (2e-3, 128, 16)
    tiny = cfg_of("row0_llava", scale="tiny").stages.pretrain
    assert (tiny.lr, tiny.global_batch_size) == (2e-3, 16)
