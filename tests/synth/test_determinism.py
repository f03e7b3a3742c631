"""Reproducible builds: one seed gives the same synthetic world — tokenizer, data twin, benchmark twins, pretrained
backbone twins — byte for byte, in any fresh cache and under any CPU thread count; the world follows the run's
``seed``; ``training_seed_offset`` changes the training draw (model init, data order) and nothing of the world.

Builds run in separate processes (``python -c``) with their own ``LMM_CACHE``, so no in-process cache can hide a
difference; the two builds of a world run with different ``OMP_NUM_THREADS`` (the Table-2 run trains seeds side by
side with fewer threads each: a twin must not depend on which process built it)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_train
from omegaconf import OmegaConf

from lmm.synth import write_twin
from lmm.synth.world import prepare_eval, twin_spec
from lmm.training.components import build_model
from lmm.training.reuse import stage_key

# the world of a twins=pretrained run, as small as it gets (2 images per benchmark, 3 pretraining steps per twin)
SMALL_WORLD = ["twins=pretrained", "model.vision.twin.pretrain.steps=3", "model.vision.twin.pretrain.batch_size=8",
               "model.llm.twin.pretrain.steps=3", "model.llm.twin.pretrain.batch_size=4", "data.twin.n_pretrain=8",
               "data.twin.n_finetune=24", "eval.synthetic_benchmarks.n_images=2", "eval.synthetic_benchmarks.image_size=32"]
BUILD = """
import hashlib, json, os, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("train", overrides=sys.argv[2:])
from lmm.synth.world import prepare_eval, prepare_training
prepare_training(cfg)
prepare_eval(cfg.eval)
root = Path(os.environ["LMM_CACHE"])
print(json.dumps({"files": {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")},
                  "data_root": str(Path(cfg.data.root).relative_to(root)),
                  "eval_root": str(Path(cfg.eval.data_root).relative_to(root))}))
"""
# what must agree (glob patterns under the cache; each must match at least one file)
MUST_MATCH = ["tokenizers/spm-*/tokenizer.model", "tokenizers/spm-*/tokenizer.json",
              "towers/clip-*/model.safetensors", "towers/clip-*/lmm_twin_pretrain.json",
              "llms/llama-*/model.safetensors", "llms/llama-*/lmm_twin_pretrain.json",
              "{data}/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "{data}/LLaVA-Pretrain/images/*/*",
              "{data}/llava_v1_5_mix665k.json", "{data}/coco/train2017/*", "{data}/gqa/images/*",
              "{eval}/gqa/data/testdev_balanced_questions.json", "{eval}/gqa/llava_gqa_testdev_balanced.jsonl",
              "{eval}/pope/llava_pope_test.jsonl", "{eval}/pope/coco/coco_pope_adversarial.json",
              "{eval}/vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "{eval}/vqav2/v2_mscoco_val2014_annotations.json",
              "{eval}/mmbench/mmbench_dev_20230712.tsv", "{eval}/seed_bench/SEED-Bench.json",
              "{eval}/scienceqa/problems.json", "{eval}/textvqa/TextVQA_0.5.1_val.json", "{eval}/MME/llava_mme.jsonl",
              "{eval}/mm-vet/mm-vet.json", "{eval}/llava-bench-in-the-wild/questions.jsonl", "{eval}/vizwiz/val.json"]


def build_worlds(*builds: tuple[Path, int, list[str]]) -> list[dict]:
    """Each (cache folder, OMP_NUM_THREADS, overrides) built by its own process, all at once; what each wrote."""
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(REPO / "conf"), f"paths.root_dir={REPO}", *SMALL_WORLD,
                               *overrides], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "LMM_CACHE": str(cache), "OMP_NUM_THREADS": str(threads)})
             for cache, threads, overrides in builds]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-4000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def test_a_world_is_byte_identical_in_fresh_caches_whatever_the_thread_count(tmp_path):
    first, second = build_worlds((tmp_path / "a", 1, ["seed=5"]), (tmp_path / "b", 2, ["seed=5"]))
    assert first["data_root"] == second["data_root"] and first["eval_root"] == second["eval_root"]
    files = first["files"]
    for pattern in MUST_MATCH:
        pattern = pattern.format(data=first["data_root"], eval=first["eval_root"])
        assert any(Path(f).match(pattern) for f in files), f"no file {pattern} in the built world"
    differ = sorted(f for f in files.keys() | second["files"].keys() if files.get(f) != second["files"].get(f))
    assert not differ, f"{len(differ)} file(s) differ between two builds of one world: {differ[:10]}"


def test_a_twin_trains_with_one_thread_and_leaves_the_callers_count(tmp_path):
    from lmm.synth.twin_tower import pretrain_twin_tower

    vision = {"kind": "hf", "model_type": "clip", "twin": {
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 16,
        "patch_size": 8, "pretrain": {"steps": 1, "batch_size": 2, "render_size": 16}}}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        folder = pretrain_twin_tower(vision, tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert json.loads((folder / "lmm_twin_pretrain.json").read_text())["threads"] == 1  # in its key


def world(*overrides, entry="train"):
    if entry == "train":
        return compose_train("paths.output_dir=/tmp/x", *overrides)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("eval", overrides=[f"paths.root_dir={REPO}", "checkpoint=x", *overrides])


def test_the_world_follows_the_run_seed():
    one, two = world("seed=1"), world("seed=2")
    assert (one.data.twin.seed, one.eval.synthetic_benchmarks.seed, two.data.twin.seed) == (1, 1, 2)
    assert one.data.root != two.data.root and one.eval.data_root != two.eval.data_root
    assert one.eval.data_root.endswith("/synthetic/eval-1-64-24")  # seed, image size, images per benchmark
    assert world("seed=1", "eval.synthetic_benchmarks.n_images=96").eval.data_root.endswith("/eval-1-64-96")
    assert world("seed=1", "eval.synthetic_benchmarks.image_size=32").eval.data_root.endswith("/eval-1-32-24")
    shards = world("seed=3", "data=synthetic_shards")
    assert shards.data.twin.seed == 3 and "/basic-3-" in shards.data.root
    evaluation = world("seed=2", entry="eval")  # eval.py writes the twins a run of seed 2 was scored on
    assert evaluation.eval.synthetic_benchmarks.seed == 2 and evaluation.eval.data_root == two.eval.data_root
    # the pretrained backbones are the released ones every run shares: their seed is their own
    pretrained = [world(f"seed={s}", "twins=pretrained").model for s in (1, 2)]
    assert pretrained[0].vision.twin.pretrain.seed == pretrained[1].vision.twin.pretrain.seed == 0
    assert pretrained[0].llm.twin.pretrain.seed == pretrained[1].llm.twin.pretrain.seed == 0


def test_another_seed_writes_other_benchmark_questions_and_data(tmp_path):
    def written(seed):
        cfg = world(f"seed={seed}", f"eval.data_root={tmp_path}/eval-{seed}", "eval.benchmarks=[gqa,pope]",
                    "eval.synthetic_benchmarks.n_images=3", f"data.root={tmp_path}/data-{seed}",
                    "data.twin.n_pretrain=4", "data.twin.n_finetune=12")
        prepare_eval(cfg.eval)
        write_twin(twin_spec(cfg.data))
        files = ["gqa/data/testdev_balanced_questions.json", "pope/llava_pope_test.jsonl"]
        bench = [(Path(cfg.eval.data_root) / f).read_bytes() for f in files]
        data = [(Path(cfg.data.root) / f).read_bytes()
                for f in ("LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "llava_v1_5_mix665k.json")]
        return bench, data

    (bench1, data1), (bench2, data2) = written(1), written(2)
    assert all(a != b for a, b in zip(bench1, bench2)), "seed 1 and 2 wrote the same benchmark questions"
    assert all(a != b for a, b in zip(data1, data2)), "seed 1 and 2 wrote the same data twin"


def connector(cfg, tokenizer):
    return {k: v.clone() for k, v in build_model(cfg, tokenizer).connector.state_dict().items()}


def test_training_seed_offset_changes_the_training_draw_not_the_world(tiny_tokenizer):
    from lmm.training.components import training_seed

    base, calib = world("seed=7"), world("seed=7", "training_seed_offset=100")
    assert (training_seed(base), training_seed(calib)) == (7, 107)
    for key in ("data.root", "data.twin.seed", "eval.data_root", "eval.synthetic_benchmarks.seed"):
        assert OmegaConf.select(base, key) == OmegaConf.select(calib, key), key
    # the model's random parts come from seed + offset: the calibration run draws what seed 107 would
    other = world("seed=107")
    drawn = {name: connector(c, tiny_tokenizer) for name, c in (("base", base), ("calib", calib), ("107", other))}
    assert any(not torch.equal(v, drawn["calib"][k]) for k, v in drawn["base"].items())
    assert all(torch.equal(v, drawn["107"][k]) for k, v in drawn["calib"].items())
    # a stage trained with another draw is another stage (never reused in its place)
    assert stage_key(base, "pretrain") != stage_key(calib, "pretrain")
    assert stage_key(base, "pretrain") == stage_key(world("seed=7", "training_seed_offset=0"), "pretrain")


def scores(run: Path) -> dict:
    """Every benchmark's scores.json without its timings (answers per second vary from run to run)."""
    timing = {"answers_per_s"}
    return {b.name: {k: v for k, v in json.loads((b / "scores.json").read_text()).items() if k not in timing}
            for b in sorted((run / "eval").iterdir()) if (b / "scores.json").exists()}


@pytest.mark.long
def test_a_tiny_run_repeats_exactly_in_fresh_caches(tmp_path):
    """train.py (random twins, both stages, GQA- and POPE-like scoring) twice in two fresh caches: the same
    losses and scores; with training_seed_offset=100 in the first cache: another draw over the same world."""
    def run(name, cache, *extra):
        out = tmp_path / name
        env = {**os.environ, "LMM_CACHE": str(tmp_path / cache)}
        res = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false",
                              f"logger.tracking_uri=sqlite:///{out}/mlflow.db", "data.twin.n_pretrain=32",
                              "data.twin.n_finetune=64", "stages.pretrain.epochs=1", "stages.finetune.epochs=1",
                              "eval.benchmarks=[gqa,pope]", "eval.synthetic_benchmarks.n_images=4", *extra],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        losses = [line for line in res.stdout.splitlines() if line.startswith(("[pretrain]", "[finetune]"))]
        return [line.split(";")[0] for line in losses], scores(out), out

    losses1, scores1, out1 = run("a", "cache-a")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "cache-a").rglob("*.json")}
    losses2, scores2, out2 = run("b", "cache-b")
    assert len(losses1) == 2 and losses1 == losses2
    assert scores1 == scores2 and set(scores1) == {"gqa", "pope"}
    assert (out1 / "finetune" / "model" / "model.safetensors").read_bytes() == \
        (out2 / "finetune" / "model" / "model.safetensors").read_bytes()
    losses3, _, _ = run("c", "cache-a", "training_seed_offset=100")
    assert losses3 != losses1
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "cache-a").rglob("*.json")
             if p in before}
    assert after == before  # the same world served the calibration run
