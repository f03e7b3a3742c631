"""DeepSpeed's engine, for real, on the CPU (its CPU accelerator, gloo, one process): the strategy lmm builds
accumulates gradients as a DDP run does, and its checkpoint folders count only when complete and are read with
weights-only loads.

Lightning's ``DeepSpeedStrategy`` makes two CUDA-only checks before the engine starts (the accelerator must be CUDA,
and each rank's device must carry an index): ``benchmarks/gpu_deepspeed.py``'s strategy passes them with CPU devices
indexed like GPUs; everything else — Lightning's loops, the engine, ZeRO-2/3, DeepSpeed's checkpoint writer and
reader, its ZeRO converter — is the code a GPU run executes. What only a GPU shows (bf16 kernels, NCCL) is checked
by ``benchmarks/gpu_step.py --deepspeed`` (docs/paper_scale.md)."""

import json
import os
import shutil
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_deepspeed import StepGradients, deepspeed_strategy, fit, official_config  # noqa: E402  (the GPU check's)

from lmm.data.batch import Batch
from lmm.training.checkpointing import (
    ResumeError,
    consolidate_deepspeed,
    find_resume_checkpoint,
    load_trainable_state,
    validate_checkpoint,
)

pytestmark = pytest.mark.slow  # each test starts DeepSpeed's engine (≈ 3 s each)



@pytest.fixture(autouse=True)
def restore_environ():
    """Lightning's DeepSpeed strategy writes MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK into
    os.environ: a later test's train.py ranks would inherit them (rank 1 would read RANK=0). (DeepSpeed's one-rank
    process group stays: DeepSpeed keeps its groups, and the next test's engine reuses it.)"""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def cpu_deepspeed(config: dict, model, precision: str = "32-true", devices: int = 1):
    """lmm's DeepSpeed strategy (as ``build_strategy`` makes it from a stage's JSON) on ``devices`` CPU processes."""
    return deepspeed_strategy(config, model, torch.device("cpu"), precision, devices)


def text_batches(tok, n: int, seed: int = 1) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for j in range(n):
        ids = torch.randint(3, len(tok), (2, 12), generator=g)
        out.append(Batch(ids, torch.ones_like(ids), ids.clone(), None, ids=[f"b{j}_{i}" for i in range(2)]))
    return out


def fresh_model(tiny_model):
    """The fixture's model, rebuilt with the same weights (each fit trains its own copy)."""
    import copy

    return copy.deepcopy(tiny_model)


# ------------------------------------------------------------------------------- 9. gradient accumulation
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_accumulation_equals_the_ddp_update(tiny_model, tiny_tokenizer, tmp_path, zero):
    """Accumulation 2 over epochs of 5 micro-batches (windows 2, 2, 1), two epochs, LLaVA's zero<2|3>.json in fp32:
    each optimizer step's gradient and the final weights equal the plain (DDP-like) Lightning run's. Lightning's
    DeepSpeedStrategy divided the loss twice (gradients ½) and let the engine step by its own counter: 5 engine
    steps, the last window of epoch 1 mixed into epoch 2's first step, Lightning counting 4 steps instead of 6."""
    batches = text_batches(tiny_tokenizer, 5)
    plain, ds = StepGradients(), StepGradients()
    ref_model, ds_model = fresh_model(tiny_model), fresh_model(tiny_model)
    ref, _ = fit(ref_model, batches, "auto", tmp_path, accumulation=2, epochs=2, callbacks=[plain])
    trainer, _ = fit(ds_model, batches, cpu_deepspeed(official_config(zero), ds_model), tmp_path, accumulation=2,
                     epochs=2, callbacks=[ds])
    assert ref.global_step == 6  # per epoch: 2 + 2 + 1 micro-batches, the short last window steps too
    assert trainer.global_step == trainer.strategy.deepspeed_engine.global_steps == 6
    assert len(ds.grads) == len(plain.grads) == 6
    for step, (g_ds, g_ref) in enumerate(zip(ds.grads, plain.grads, strict=True)):
        assert torch.allclose(g_ds, g_ref, rtol=1e-5, atol=1e-7), (step, g_ds.norm().item(), g_ref.norm().item())
    from deepspeed.utils import safe_get_full_fp32_param  # the engine's fp32 masters (gathered under ZeRO-3)

    ds_params = dict(ds_model.llm.named_parameters())
    assert max((p.detach() - safe_get_full_fp32_param(ds_params[n])).abs().max().item()
               for n, p in ref_model.llm.named_parameters()) <= 1e-6


# --------------------------------------------------------------------------- 10. complete, weights-only folders
class Batches(L.Callback):
    """How many micro-batches this fit ran."""

    count = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.count += 1


def deepspeed_checkpoint(tiny_model, tokenizer, tmp_path, stage: int, name: str = "step-000002.ckpt"):
    """A bf16 run of 2 steps (2 micro-batches) under LLaVA's zero<stage>.json, saved as a step checkpoint folder;
    (folder, trainer, module)."""
    model = fresh_model(tiny_model)
    trainer, module = fit(model, text_batches(tokenizer, 2), cpu_deepspeed(official_config(stage), model,
                                                                           "bf16-mixed"), tmp_path,
                          precision="bf16-mixed")
    folder = tmp_path / "checkpoints" / name
    trainer.save_checkpoint(str(folder))
    return folder, trainer, module


def test_a_deepspeed_checkpoint_counts_once_every_shard_is_recorded(tiny_model, tiny_tokenizer, tmp_path):
    folder, _, module = deepspeed_checkpoint(tiny_model, tiny_tokenizer, tmp_path, stage=2)
    manifest = json.loads((folder / "lmm_complete.json").read_text())
    assert (manifest["world_size"], manifest["zero_stage"], list(manifest["shards"])) == (1, 2, ["0"])
    assert sorted(os.path.basename(f) for f in manifest["shards"]["0"]) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"]
    assert (folder / "latest").read_text() == "checkpoint"
    info = validate_checkpoint(folder)  # the client state's lmm entry, loaded weights-only
    assert info["stage"] is None and "rng" in info and info["counters"]["samples_seen"] == 4
    # consolidated (DeepSpeed's converter, its loads forced weights-only) = the trained fp32 masters
    state = load_trainable_state(consolidate_deepspeed(folder))
    trained = {f"model.{k}": v for k, v in module.model.state_dict().items() if k.startswith(("llm.", "connector."))}
    assert set(state) == set(trained)
    assert max((state[k] - trained[k].float()).abs().max().item() for k in state) < 1e-2  # bf16 module vs fp32 masters
    # resumed by the engine, every load forced weights-only: the allowed types are all a genuine shard needs
    model, ran = fresh_model(tiny_model), Batches()
    resumed, _ = fit(model, text_batches(tiny_tokenizer, 2), cpu_deepspeed(official_config(2), model, "bf16-mixed"),
                     tmp_path / "resumed", epochs=2, precision="bf16-mixed", callbacks=[ran], ckpt_path=folder)
    assert (resumed.global_step, ran.count) == (4, 2)  # the checkpoint's 2 steps, then epoch 2's only

    # Each way a save can be incomplete is refused by name, and resume falls back to the previous checkpoint.
    shard = folder / "checkpoint" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    newer = shutil.copytree(folder, folder.with_name("step-000003.ckpt"))
    (newer / "lmm_complete.json").unlink()  # what DeepSpeed alone leaves when a rank is still writing: 'latest' only
    with pytest.raises(ResumeError, match="without lmm_complete.json"):
        validate_checkpoint(newer)
    assert find_resume_checkpoint(tmp_path)[0] == folder
    shutil.rmtree(newer)
    newer = shutil.copytree(folder, folder.with_name("step-000003.ckpt"))
    with open(newer / "checkpoint" / shard.name, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(ResumeError, match=r"rank 0's shard checkpoint/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt "
                                          r"has \d+ bytes, \d+ when written"):
        validate_checkpoint(newer)
    assert find_resume_checkpoint(tmp_path)[0] == folder
    (newer / "checkpoint" / shard.name).unlink()
    (newer / "fp32_state.pt").unlink()  # copied from the consolidated folder
    with pytest.raises(ResumeError, match="rank 0's shard .*optim_states.pt is missing"):
        consolidate_deepspeed(newer)


class _Planted:
    """What a tampered shard could hold: unpickling it would create a folder (any call could run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_tampered_deepspeed_shard_is_refused_not_run(tiny_model, tiny_tokenizer, tmp_path):
    """A shard whose pickle calls a function — its size recorded in the manifest too, as someone with write access
    could — is refused by the weights-only loads of consolidation and of resume; the call never runs."""
    folder, _, _ = deepspeed_checkpoint(tiny_model, tiny_tokenizer, tmp_path, stage=3)
    shard = next((folder / "checkpoint").glob("*_optim_states.pt"))
    marker = tmp_path / "code_ran"
    state = torch.load(shard, weights_only=False)  # test-side: the genuine shard, then the planted object
    state["planted"] = _Planted(marker)
    torch.save(state, shard)
    manifest = json.loads((folder / "lmm_complete.json").read_text())
    manifest["shards"]["0"][f"checkpoint/{shard.name}"] = shard.stat().st_size
    (folder / "lmm_complete.json").write_text(json.dumps(manifest))
    validate_checkpoint(folder)  # complete and well-formed: only loading it shows what it holds
    with pytest.raises(ResumeError, match=r"a shard holds an object a weights-only load refuses \(.*posix.mkdir"):
        consolidate_deepspeed(folder)
    with pytest.raises(ResumeError, match="weights-only load refuses"):
        fit(tiny_model, text_batches(tiny_tokenizer, 2), cpu_deepspeed(official_config(3), tiny_model, "bf16-mixed"),
            tmp_path, precision="bf16-mixed", ckpt_path=folder)
    assert not marker.exists()
    assert not (folder / "fp32_state.pt").exists()


@pytest.mark.long  # two processes, each importing torch + DeepSpeed (≈ 30-60 s on 2 cores): make test-long
def test_two_deepspeed_ranks_step_as_one_and_record_both_shards(tiny_model, tiny_tokenizer, tmp_path):
    """Two ranks (gloo) × accumulation 2 × 5 micro-batches each = the one-process run with accumulation 4 over the
    same 10 micro-batches: 3 optimizer steps (the short last window included) and the same weights. Their
    checkpoint records both ranks' shards; without rank 1's optimizer shard it is refused, naming it."""
    assert two_ranks(tmp_path, 2) == {"global_step": 3, "engine_steps": 3, "world_size": 2}
    ref_model = fresh_model(tiny_model)
    ref, _ = fit(ref_model, text_batches(tiny_tokenizer, 10), "auto", tmp_path / "ref", accumulation=4)
    assert ref.global_step == 3
    two = torch.load(tmp_path / "llm.pt", weights_only=True)
    one = ref_model.llm.state_dict()
    assert max((two[k] - one[k]).abs().max().item() for k in one) <= 1e-6

    folder = tmp_path / "checkpoints" / "step-000003.ckpt"
    manifest = json.loads((folder / "lmm_complete.json").read_text())
    assert (manifest["world_size"], sorted(manifest["shards"])) == (2, ["0", "1"])
    assert [os.path.basename(f) for f in manifest["shards"]["1"]] == ["zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    state = load_trainable_state(consolidate_deepspeed(folder))  # both ranks' partitions merged
    assert max((state[f"model.llm.{k}"] - one[k]).abs().max().item() for k in one) <= 1e-6
    (folder / "checkpoint" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(ResumeError, match="rank 1's shard checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt is "
                                          "missing"):
        validate_checkpoint(folder)


def two_ranks(tmp_path, zero: int) -> dict:
    """``deepspeed_two_ranks.py`` run under LLaVA's zero<zero>.json; its result.json."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, str(REPO / "tests" / "training" / "deepspeed_two_ranks.py"), str(tmp_path),
                          str(zero)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.long  # two processes, each importing torch + DeepSpeed (≈ 30-60 s on 2 cores): make test-long
def test_under_zero3_rank_1_never_holds_the_whole_model(tiny_model, tiny_tokenizer, tmp_path):
    """LLaVA's stage 2 (zero3.json) on two ranks: rank 1 builds the model on the meta device (holds_whole_model) and
    the strategy materialises each parameter as DeepSpeed partitions it, with rank 0's values — rank 1 ends up
    holding half the LLM, never all of it — and the training is the one-process run's (accumulation 4, same 10
    micro-batches): 3 steps, the same weights."""
    assert two_ranks(tmp_path, 3) == {"global_step": 3, "engine_steps": 3, "world_size": 2}
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1["built_meta"] and not rank1["meta_left"]
    assert rank1["llm_held"] <= rank1["llm_numel"] // 2 + 64  # its partition (padded to the world size), not all
    ref_model = fresh_model(tiny_model)
    fit(ref_model, text_batches(tiny_tokenizer, 10), "auto", tmp_path / "ref", accumulation=4)
    two, one = torch.load(tmp_path / "llm.pt", weights_only=True), ref_model.llm.state_dict()
    assert max((two[k] - one[k]).abs().max().item() for k in one) <= 1e-6
