"""The pre-flight plan against LLaVA's clock (issue 22): per-stage utilisation calibrated on LLaVA's reported times,
FLOPs and logits memory of the path training takes (label-only LM head, frozen LLM in stage 1), the memory-bound
traffic of a real Llama layer, a batch that does not divide named as such, the docs' examples, and the strategy
search (the fastest configuration that fits, with overrides that do give it). Offline; seconds."""

import re

import pytest
from conftest import REPO

from lmm.training.plan import PlanError, make_plan, run_plan

from .test_plan import cfg_of


@pytest.fixture(scope="module")
def plans():
    return {e: make_plan(cfg_of(e)) for e in ("llava_v1_5_7b", "llava_v1_5_13b")}


OFFICIAL_HOURS = {("llava_v1_5_7b", "pretrain"): 3.5, ("llava_v1_5_7b", "finetune"): 10.0,   # LLaVA README, 8 × A100
                  ("llava_v1_5_13b", "pretrain"): 5.5, ("llava_v1_5_13b", "finetune"): 20.0}


def test_stage_times_match_the_official_clock(plans):
    """`make plan` / `make plan ROW=llava_v1_5_13b` (defaults: 8 × A100 80GB, the official strategies) give each
    stage within 10 % of LLaVA's reported wall-clock, stage 1 included (one utilisation per stage)."""
    for (e, stage), hours in OFFICIAL_HOURS.items():
        st = plans[e]["stages"][stage]
        assert st["hours"] == pytest.approx(hours, rel=0.10), (e, stage, st["hours"])
        implied = st["implied"]                                           # end-to-end MFU / HFU the time means
        assert 0.2 < implied["mfu"] < implied["hfu"] < 0.7


def test_the_utilisation_is_per_stage():
    base = make_plan(cfg_of("llava_v1_5_7b"))["stages"]
    other = make_plan(cfg_of("llava_v1_5_7b", "preflight.hfu.pretrain=0.3"))["stages"]
    assert other["finetune"]["hours"] == base["finetune"]["hours"]
    assert other["pretrain"]["hours"] > base["pretrain"]["hours"]


def _measured_flops(trainable, labelled):
    """FLOPs of one real forward + backward of a tiny LLaVA (eager attention, so every matmul is counted), per
    sample: torch's FlopCounterMode over the training path (logits at labelled positions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lmm.models.build import build_llava
    from lmm.text.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from lmm.training.stages import apply_stage

    torch.manual_seed(0)
    vision = dict(kind="hf", model_type="clip", config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, image_size=56, patch_size=7, attn_implementation="eager"))
    llm = dict(model_type="llama", attn_implementation="eager", config=dict(
        hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=1000, max_position_embeddings=512, pad_token_id=0))
    model = build_llava(vision, {"name": "mlp2x_gelu"}, llm, 512).train()
    apply_stage(model, trainable, None)
    B, n_text = 2, 40
    ids = torch.randint(3, 999, (B, n_text + 1))
    ids[:, 0], ids[:, 1] = 1, IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, :n_text + 1 - labelled] = IGNORE_INDEX
    with FlopCounterMode(display=False) as counter:
        model(ids, torch.ones_like(ids), labels, torch.randn(B, 3, 56, 56), logits="labelled").loss.backward()
    return counter.get_total_flops() / B, model, n_text + model.num_image_tokens


@pytest.mark.parametrize("trainable", [["connector"], ["connector", "llm"]])
def test_flops_follow_the_training_path(trainable):
    """The plan's FLOPs per sample against torch's count of a real step: the frozen LLM of stage 1 backpropagates
    input gradients only (2N, not 4N), the frozen tower runs forward only, and the LM head runs at the labelled
    positions only (the label-only head training uses), so two label counts differ by (2 + 2 or 4)·V·h per label."""
    from lmm.training.plan_costs import model_shape, sample_flops

    few, model, T = _measured_flops(trainable, 5)
    many, _, _ = _measured_flops(trainable, 30)
    s = model_shape(model)
    trains = "llm" in trainable
    per_label = (2 + (4 if trains else 2)) * s.head_params
    assert many - few == pytest.approx(25 * per_label, rel=1e-6)
    for measured, labels in ((few, 5), (many, 30)):
        planned = sample_flops(s, T, T * T, 1.0, llm_trains=trains, head_tokens=labels).model
        assert planned == pytest.approx(measured, rel=0.06)
        assert sample_flops(s, T, T * T, 1.0, llm_trains=trains).model > planned + 0.5 * (T - labels) * per_label


def test_logits_memory_is_the_label_only_path(plans):
    """Training runs the LM head at labelled positions only: the logits term is 10 bytes × labels × V per sample (the
    caption of stage 1: ≈ 0.6 GiB at micro batch 32, not the 6.1 GiB of every position), and LLaVA's own 7B stage-2
    setting (ZeRO-3, micro batch 16, checkpointing on) fits an A100 40GB, as LLaVA trained it."""
    pre = plans["llava_v1_5_7b"]["stages"]["pretrain"]
    labels = pre["tokens"]["labels_peak"]
    assert 40 < labels < pre["tokens"]["text_peak"] and pre["tokens"]["labels_mean"] < pre["tokens"]["text_mean"]
    assert pre["memory_gib"]["logits"] == pytest.approx(10 * 32 * labels * 32000 / 2**30, rel=1e-6)
    assert pre["memory_gib"]["logits"] < 1.0
    fin = plans["llava_v1_5_7b"]["stages"]["finetune"]["tokens"]
    assert 60 < fin["labels_mean"] < fin["text_mean"] / 2 and fin["labels_peak"] < 2048
    st = make_plan(cfg_of("llava_v1_5_7b", "preflight.gpu=a100_40g", "run_stages=[finetune]"))["stages"]["finetune"]
    assert st["fits"] and "error" not in st, st.get("error")
    assert st["strategy"] == "deepspeed ZeRO-3" and st["micro_batch"] == 16 and st["checkpointing"]


def test_a_batch_that_does_not_divide_is_named_so_not_does_not_fit(capsys):
    cfg = cfg_of("llava_v1_5_13b", "preflight.gpu=h100_80g", "preflight.gpus=16")
    with pytest.raises(PlanError) as err:
        run_plan(cfg)
    msg = str(err.value)
    assert "the global batch (256) does not divide by 16 GPUs × micro batch 32" in msg
    assert "stages.pretrain.micro_batch_size=16" in msg and "stages.finetune.micro_batch_size=8" in msg
    assert "does not fit" not in msg.lower() and "DOES NOT FIT" not in capsys.readouterr().out
    st = make_plan(cfg_of("llava_v1_5_7b", "preflight.gpus=48", "run_stages=[finetune]"))["stages"]["finetune"]
    assert "the global batch (128) does not divide by 48 GPUs × micro batch 16" in st["error"]
    assert "stages.finetune.global_batch_size=144" in st["error"]                 # 48 × 3, or a world dividing 128
    fixed = make_plan(cfg_of("llava_v1_5_13b", "preflight.gpu=h100_80g", "preflight.gpus=16",
                             "stages.pretrain.micro_batch_size=16", "stages.finetune.micro_batch_size=8"))
    assert all(s["fits"] and "error" not in s for s in fixed["stages"].values())


DOCS = REPO / "docs" / "preflight.md"


def _cfg_of_command(args: str):
    """The config of `python train.py <args>` (a `+experiment=... scale=paper plan=true ...` command)."""
    words = args.split()
    assert "scale=paper" in words and "plan=true" in words, args
    experiment = next(w.split("=", 1)[1] for w in words if w.startswith("+experiment="))
    return cfg_of(experiment, *[w for w in words if w not in ("scale=paper", "plan=true")
                                and not w.startswith("+experiment=")])


def test_the_docs_examples_plan_without_error():
    """Each command of docs/preflight.md's first bash block plans with no stage refused (the 16-GPU one included)."""
    block = DOCS.read_text().split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("train.py", 1)[1] for line in block.splitlines() if "train.py" in line]
    assert len(commands) == 3
    for args in commands:
        plan = make_plan(_cfg_of_command(args))
        assert all("error" not in s for s in plan["stages"].values()), (args, [s.get("error") for s in
                                                                            plan["stages"].values()])


def test_the_docs_plans_are_the_codes_output():
    """The four plans pasted in docs/preflight.md are what the code prints for their commands today."""
    from lmm.training.plan_report import format_plan

    blocks = re.findall(r"^`python train\.py ([^`]*)`:\n```\n(.*?)\n```", DOCS.read_text(), re.S | re.M)
    assert len(blocks) == 4
    for args, block in blocks:
        assert format_plan(make_plan(_cfg_of_command(args))) == block, args


def test_the_fastest_strategy_that_fits_is_recommended(capsys):
    """Every candidate (ddp, ZeRO-2, ZeRO-3, FSDP, checkpointing on / off, the largest micro batch keeping the global
    batch) is planned; the fastest that fits is recommended with its overrides, and those overrides do give it."""
    cfg = cfg_of("llava_v1_5_7b", "run_stages=[finetune]")
    plan = run_plan(cfg)
    st = plan["stages"]["finetune"]
    options = st["options"]
    names = {(o["strategy"], o["checkpointing"]) for o in options}
    assert {("ddp", True), ("deepspeed ZeRO-2", True), ("deepspeed ZeRO-3", True), ("fsdp", True),
            ("deepspeed ZeRO-2", False)} <= names
    fitting = [o for o in options if o["fits"]]
    fastest = st["fastest"]
    assert fastest["hours"] <= 1.01 * min(o["hours"] for o in fitting) and fastest["hours"] < st["hours"]
    assert fastest["strategy"] == "deepspeed ZeRO-2"                     # 7B stage 2 on 80 GB: no ZeRO-3 gathers
    assert not next(o for o in options if o["strategy"] == "ddp" and o["checkpointing"])["fits"]
    configured = next(o for o in options if o["configured"])
    assert configured["hours"] == pytest.approx(st["hours"]) and configured["strategy"] == "deepspeed ZeRO-3"
    out = capsys.readouterr().out
    assert "fastest that fits" in out and " ".join(fastest["overrides"]) in out
    again = make_plan(cfg_of("llava_v1_5_7b", "run_stages=[finetune]", *fastest["overrides"]))["stages"]["finetune"]
    assert again["strategy"] == fastest["strategy"] and again["checkpointing"] == fastest["checkpointing"]
    assert again["micro_batch"] == fastest["micro"] and again["hours"] == pytest.approx(fastest["hours"])
    assert again["fastest"]["hours"] == pytest.approx(fastest["hours"])


def test_recompute_and_communication_cost_time():
    """Checkpointing costs its recompute; ZeRO-3 gathers the weights at every micro batch (forward and backward),
    ZeRO-2 once per step, DDP all-reduces once per step; across nodes the links are slower."""
    from lmm.training.plan_costs import GPUS, Sharding
    from lmm.training.plan_time import comm_seconds

    gpu, P = GPUS["a100_80g"], 7_000_000_000
    z2, z3, ddp = Sharding("zero", zero_stage=2), Sharding("zero", zero_stage=3), Sharding("replicate")
    t = {(k, n): comm_seconds(sh, 8, P, 300_000_000, n, gpu) for k, sh in (("z2", z2), ("z3", z3), ("ddp", ddp))
         for n in (1, 4)}
    assert 0 < t["z2", 1] < t["z3", 1] and t["z3", 4] > 3 * t["z3", 1]
    assert t["ddp", 4] == t["ddp", 1] > 0
    assert comm_seconds(z3, 16, P, 0, 1, gpu) > 4 * comm_seconds(z3, 8, P, 0, 1, gpu)    # 2 nodes: InfiniBand
    st = {ck: make_plan(cfg_of("llava_v1_5_7b", f"model.llm.gradient_checkpointing={ck}", "preflight.gpu=h200",
                               "stages.finetune.micro_batch_size=4", "run_stages=[finetune]"))["stages"]["finetune"]
          for ck in ("true", "false")}
    assert st["true"]["hours"] > 1.15 * st["false"]["hours"]
    assert st["true"]["flops_per_step"] > st["false"]["flops_per_step"] == st["false"]["model_flops_per_step"]


@pytest.mark.parametrize("h,i,kv_heads", [(512, 1376, 8), (512, 2752, 2)])
def test_memory_bound_traffic_matches_what_a_llama_layer_moves(h, i, kv_heads):
    """The non-matmul bytes per token of plan_costs (RMSNorms with their fp32 upcasts, rotary, SwiGLU, residuals and
    their gradients: what HBM bandwidth, not FLOPs, limits) against what every non-matmul aten op of transformers'
    LlamaDecoderLayer reads and writes in a bf16-autocast forward and backward (views excluded), per token: the
    slope between two sequence lengths, so the weights' per-step casts drop out."""
    import torch
    import transformers
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from lmm.training.plan_costs import layer_traffic_per_token

    skip = ("mm", "bmm", "addmm", "_scaled_dot_product")

    class Traffic(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.__name__.startswith(skip):
                ins = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
                mine = {a.untyped_storage().data_ptr() for a in ins}
                outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)
                        and o.untyped_storage().data_ptr() not in mine]          # a view moves nothing
                if outs:
                    Traffic.total += sum(a.nbytes for a in ins if a.dim() >= 2) + sum(o.nbytes for o in outs)
            return out

    cfg = transformers.LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=1, num_attention_heads=8,
                                   num_key_value_heads=kv_heads, vocab_size=100)
    llama = transformers.LlamaForCausalLM(cfg).model
    layer, rotary = llama.layers[0], llama.rotary_emb

    def moved(T, b=2):
        x = torch.randn(b, T, h, dtype=torch.bfloat16, requires_grad=True)
        pos = torch.arange(T)[None].expand(b, T)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pe = rotary(x, pos)
            Traffic.total = 0
            with Traffic():
                y = layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos)
                y = y[0] if isinstance(y, tuple) else y
                fwd = Traffic.total
                y.backward(torch.ones_like(y))
        return fwd, Traffic.total - fwd

    (f1, b1), (f2, b2) = moved(64), moved(192)
    fwd, bwd = layer_traffic_per_token(h, kv_heads * h // 8, i)
    assert (f2 - f1) / 256 == pytest.approx(fwd, rel=0.08)
    assert (b2 - b1) / 256 == pytest.approx(bwd, rel=0.08)


def test_every_candidates_overrides_give_that_candidate():
    """Each fitting candidate's overrides, applied to the configured stage, plan as that candidate (strategy,
    checkpointing — through the model's flag or FSDP's own — micro batch, time): here on H200s, where most fit."""
    base = ("llava_v1_5_7b", "preflight.gpu=h200", "run_stages=[finetune]")
    st = make_plan(cfg_of(*base))["stages"]["finetune"]
    fitting = [o for o in st["options"] if o["fits"]]
    assert {(o["key"], o["checkpointing"]) for o in fitting} >= {("fsdp", False), ("fsdp", True), ("ddp", True)}
    for o in fitting:
        again = make_plan(cfg_of(*base, *o["overrides"]))["stages"]["finetune"]
        got = (again["strategy"], again["checkpointing"], again["micro_batch"], round(again["hours"], 6))
        assert got == (o["strategy"], o["checkpointing"], o["micro"], round(o["hours"], 6)), o["overrides"]


@pytest.mark.parametrize("override,key", [("preflight.hfu.finetune=1.5", "preflight.hfu"),
                                          ("preflight.gpu=v100", "preflight.gpu"),
                                          ("preflight.label_share.sharegpt=2", "preflight.label_share.sharegpt"),
                                          ("~preflight.hfu.default", "preflight.hfu.task")])
def test_a_bad_assumption_is_a_plan_error_naming_its_key(override, key):
    """A wrong preflight value is refused as a PlanError (one line, printed by train.py) naming the key and a fix."""
    stages = (["+stages.task=${stages.finetune}", "+data.task=${data.finetune}", "run_stages=[task]"]
              if key.endswith(".task") else [])
    with pytest.raises(PlanError, match=re.escape(key)) as err:
        make_plan(cfg_of("llava_v1_5_7b", override, *stages))
    assert "\n" not in str(err.value) and ("set " in str(err.value) or "known:" in str(err.value))
