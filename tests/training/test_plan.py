"""The pre-flight plan (``plan=true``) of the paper experiments: the real-size model built on the meta device from the
configs' ``arch`` blocks (counts as spec Appendix), steps as spec §4, memory per strategy, the refusal that names a
configuration that fits, and measured token lengths from a manifest. Offline; seconds."""

import json
import time

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from lmm.training.plan import PlanError, make_plan, run_plan, world_size

CONF = REPO / "conf"
EXPERIMENTS = ("llava_v1_5_7b", "llava_v1_5_13b", "llava_v1_5_7b_lora", "llava_v1_5_13b_hd")


def cfg_of(name, *overrides, scale="paper"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"+experiment={name}", f"scale={scale}", f"paths.root_dir={REPO}",
                                           "paths.output_dir=/tmp/unused", *overrides])


@pytest.fixture(scope="module")
def plans():
    out, seconds = {}, {}
    for e in EXPERIMENTS:
        cfg = cfg_of(e)
        t0 = time.perf_counter()
        out[e] = make_plan(cfg)
        seconds[e] = time.perf_counter() - t0
    out["seconds"] = seconds
    return out


def test_parameter_counts_match_the_spec_appendix(plans):
    p7, p13 = plans["llava_v1_5_7b"]["stages"], plans["llava_v1_5_13b"]["stages"]
    for stages, llm, proj in ((p7, 6.74e9, 1024 * 4096 + 4096 + 4096 * 4096 + 4096),
                              (p13, 13.0e9, 1024 * 5120 + 5120 + 5120 * 5120 + 5120)):
        pre, fin = stages["pretrain"]["params"], stages["finetune"]["params"]
        assert fin["llm"]["trainable"] == pytest.approx(llm, rel=0.005) and fin["llm"]["frozen"] == 0
        assert pre["llm"] == {"trainable": 0, "frozen": fin["llm"]["trainable"]}      # stage 1: LLM frozen
        assert pre["vision"]["trainable"] == fin["vision"]["trainable"] == 0          # the tower always
        assert fin["vision"]["frozen"] == pytest.approx(0.30e9, rel=0.02)
        assert pre["connector"] == fin["connector"] == {"trainable": proj, "frozen": 0}  # ≈ 21 M / 31.5 M
    assert p7["finetune"]["params"]["connector"]["trainable"] == pytest.approx(21.0e6, rel=0.01)
    assert p13["finetune"]["params"]["connector"]["trainable"] == pytest.approx(31.5e6, rel=0.01)


def test_steps_match_the_spec(plans):
    for e in EXPERIMENTS:
        st = plans[e]["stages"]
        assert st["pretrain"]["samples"] == 558_128 and st["pretrain"]["steps"] == 2_181      # ceil(558,128 / 256)
        assert st["finetune"]["samples"] == 665_298 and st["finetune"]["steps"] == 5_198      # spec §4
        assert plans[e]["world"] == 8 and st["finetune"]["accumulation"] == 1
    tok = plans["llava_v1_5_7b"]["stages"]["finetune"]["tokens"]
    assert tok["image"] == 576 and tok["seq_peak"] == 2048 and "estimate" in tok["origin"]
    assert 600 < tok["seq_mean"] < 1200 and tok["image_share"] == pytest.approx(1 - 40_688 / 665_298)


def test_lora_and_hd(plans):
    lora = plans["llava_v1_5_7b_lora"]["stages"]["finetune"]
    h, i, L, r = 4096, 11008, 32, 128
    assert lora["params"]["lora"] == {"trainable": L * r * (4 * 2 * h + 3 * (h + i)), "frozen": 0}   # q k v o gate up down
    assert lora["params"]["llm"]["trainable"] == 0 and lora["params"]["connector"]["frozen"] == 0
    full = plans["llava_v1_5_7b"]["stages"]["finetune"]
    assert lora["memory_gib"]["optimizer"] < full["memory_gib"]["optimizer"] / 10
    assert lora["flops_per_step"] < full["flops_per_step"]
    hd = plans["llava_v1_5_13b_hd"]["stages"]
    assert hd["pretrain"]["tokens"]["image"] == 256 and hd["pretrain"]["params"]["hd"]["trainable"] == 0
    assert hd["finetune"]["tokens"]["image"] == 1888 and hd["finetune"]["tokens"]["views"] == 7
    assert hd["finetune"]["params"]["hd"] == {"trainable": 5120, "frozen": 0}


def test_plan_fits_the_paper_setup_and_times_are_in_the_readme_range(plans):
    for e in ("llava_v1_5_7b", "llava_v1_5_13b"):
        for s in plans[e]["stages"].values():
            assert s["fits"] and s["strategy"].startswith("deepspeed ZeRO-") and s["checkpointing"]
    t7, t13 = (plans[e]["stages"]["finetune"]["hours"] for e in ("llava_v1_5_7b", "llava_v1_5_13b"))
    assert 7 < t7 < 14 and 14 < t13 < 28                       # README: ≈ 10 h and ≈ 20 h on 8 × A100
    assert max(plans["seconds"].values()) < 10


def test_zero3_and_fsdp_need_less_memory_than_ddp():
    mem = {}
    for strategy in ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"):
        cfg = cfg_of("llava_v1_5_7b", f"strategy@stages.finetune.strategy={strategy}", "preflight.gpu=h200",
                     "run_stages=[finetune]")
        mem[strategy] = make_plan(cfg)["stages"]["finetune"]["memory_gib"]
    assert mem["deepspeed_zero3"]["total"] < mem["deepspeed_zero2"]["total"] < mem["ddp"]["total"]
    assert mem["fsdp"]["total"] < mem["ddp"]["total"]
    assert mem["deepspeed_zero3"]["weights"] < mem["ddp"]["weights"] / 4
    assert mem["deepspeed_zero3"]["optimizer"] == pytest.approx(mem["ddp"]["optimizer"] * 12 / 8 / 8, rel=0.01)


def test_an_impossible_config_is_refused_with_one_that_fits(capsys):
    cfg = cfg_of("llava_v1_5_13b", "strategy@stages.finetune.strategy=ddp", "preflight.gpu=a100_40g",
                 "run_stages=[finetune]")
    with pytest.raises(PlanError) as err:
        run_plan(cfg)
    msg = str(err.value)
    assert "does not fit" in msg and "strategy@stages.finetune.strategy=deepspeed_zero3" in msg
    assert "DOES NOT FIT" in capsys.readouterr().out          # the table is printed before the refusal
    fix = make_plan(cfg)["stages"]["finetune"]["suggestion"]
    fixed = make_plan(cfg_of("llava_v1_5_13b", "preflight.gpu=a100_40g", "run_stages=[finetune]", *fix))
    assert fixed["stages"]["finetune"]["fits"]


def test_checkpointing_is_the_first_remedy():
    cfg = cfg_of("llava_v1_5_7b", "model.llm.gradient_checkpointing=false", "run_stages=[finetune]")
    st = make_plan(cfg)["stages"]["finetune"]
    assert not st["fits"] and st["suggestion"] == ["model.llm.gradient_checkpointing=true"]
    m = st["memory_gib"]
    assert m["activations_no_ckpt"] > 5 * m["activations_ckpt"]


def test_world_size_and_batch_divisibility():
    assert world_size(cfg_of("llava_v1_5_7b")) == 8                                 # devices: auto → preflight.gpus
    assert world_size(cfg_of("llava_v1_5_7b", "trainer.devices=4", "trainer.num_nodes=2")) == 8
    st = make_plan(cfg_of("llava_v1_5_7b", "preflight.gpus=16", "run_stages=[finetune]"))["stages"]["finetune"]
    assert "does not divide by 16 GPUs × micro batch 16" in st["error"]               # 128 ≠ 16 × 16 × k


def test_text_tokens_are_measured_from_a_converted_manifest(tmp_path):
    rows = [("llava_instruct", 1, 101), ("sharegpt", 0, 3000), ("vqav2", 1, 51), ("vqav2", 1, 31)]
    with open(tmp_path / "manifest.jsonl", "w") as f:
        for k, (source, n_img, tokens) in enumerate(rows):
            f.write(json.dumps({"key": f"{k:09d}", "id": str(k), "source": source, "has_image": bool(n_img),
                                "n_images": n_img, "words": 10, "tokens": tokens, "shard": "shard-000000.tar",
                                "position": k, "members": {}}) + "\n")
    cfg = cfg_of("llava_v1_5_7b", f"data.finetune.shards={tmp_path}", "run_stages=[finetune]",
                 "+data.finetune.sources.vqav2.subsample=0.5")
    st = make_plan(cfg)["stages"]["finetune"]
    seqs = [100 + 576, 2048, 50 + 576]                       # text = tokens − markers; T capped at max_length
    assert st["samples"] == 3 and st["steps"] == 1 and "measured" in st["tokens"]["origin"]
    assert st["tokens"]["seq_mean"] == pytest.approx((seqs[0] + seqs[1] + (seqs[2] + 30 + 576) / 2) / 3)
    assert st["tokens"]["seq_peak"] == 2048 and st["tokens"]["text_peak"] == 3000


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_activation_formula_matches_the_tensors_a_llama_layer_saves(kv_heads):
    """The per-token, per-layer activation bytes of plan_costs against what autograd actually keeps for backward in
    transformers' LlamaDecoderLayer under bf16 autocast with SDPA (unique storages of batch-shaped saved tensors)."""
    import torch
    import transformers

    from lmm.training.plan_costs import layer_bytes_per_token

    h, i, heads, b, T = 512, 1376, 8, 3, 300
    cfg = transformers.LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=1, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, vocab_size=100)
    model = transformers.LlamaForCausalLM(cfg)
    x = torch.randn(b, T, h, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(T)[None].expand(b, T)
    saved = {}

    def pack(t):
        if t.dim() >= 3 or (t.dim() == 2 and t.shape[0] == b * T):   # activations, not weights
            saved[t.untyped_storage().data_ptr()] = max(saved.get(t.untyped_storage().data_ptr(), 0),
                                                        t.untyped_storage().nbytes())
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model.layers[0](x, position_embeddings=model.model.rotary_emb(x, pos), attention_mask=None,
                              position_ids=pos)
    measured = sum(saved.values()) / (b * T)
    assert measured == pytest.approx(layer_bytes_per_token(h, kv_heads * h // heads, i), rel=0.1)


def test_an_on_demand_conversion_in_the_cache_is_found(tmp_path):
    """Without data.<stage>.shards the plan finds the conversion of data.<stage>.json under the shard cache (matched
    by the JSON's path, size and mtime), as the DataModule names it; a changed JSON is not matched."""
    from lmm.training.plan_data import find_manifest

    src = tmp_path / "mix.json"
    src.write_text("[]")
    folder = tmp_path / "cache" / "shards" / "finetune-abc123"
    folder.mkdir(parents=True)
    st = src.stat()
    (folder / "convert.json").write_text(json.dumps({"json": str(src.resolve()), "size": st.st_size,
                                                     "mtime_ns": st.st_mtime_ns}))
    (folder / "manifest.jsonl").write_text("")
    data = {"shard_cache": str(tmp_path / "cache"), "finetune": {"json": str(src), "shards": None}}
    assert find_manifest(data, "finetune") == folder / "manifest.jsonl"
    assert find_manifest(data, "pretrain") is None
    src.write_text("[ ]")
    assert find_manifest(data, "finetune") is None

