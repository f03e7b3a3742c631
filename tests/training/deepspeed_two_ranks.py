"""Two CPU ranks of lmm's DeepSpeed strategy (LLaVA's zero<2|3>.json, gloo; Lightning starts rank 1 by re-running this
script): ``python tests/training/deepspeed_two_ranks.py <out_dir> [zero stage, default 2]``. Each rank builds the
model a training run's rank builds for such a stage (:func:`lmm.training.stage_model.holds_whole_model`: whole, or
— rank 1 under ZeRO-3 — on the meta device). Trains the tiny model with accumulation 2 on 5 micro-batches per rank
(windows 2, 2, 1), saves a step checkpoint, and writes ``<out_dir>/result.json`` (rank 0): Lightning's and the
engine's step counts, and the trained LLM weights (``llm.pt``); rank 1 writes ``rank1.json``: how it built the
model and how many elements of the LLM's parameters it held after training. Run by
tests/training/test_deepspeed_cpu.py."""

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import CACHE, TINY_LLM, TINY_VISION  # noqa: E402
from test_deepspeed_cpu import cpu_deepspeed, official_config, text_batches  # noqa: E402

from lmm.models.build import build_llava  # noqa: E402
from lmm.synth import tokenizer_corpus  # noqa: E402
from lmm.text.tokenizer import train_tiny_tokenizer  # noqa: E402
from lmm.training.module import LlavaLitModule  # noqa: E402
from lmm.training.stage_model import holds_whole_model  # noqa: E402

MICRO_BATCHES = 5  # per rank


class RankBatches(torch.utils.data.Dataset):
    """Rank r's micro-batches: the r-th of every pair of ``text_batches`` (so the 2 ranks together see them all)."""

    def __init__(self, batches, rank):
        self.batches = batches[rank::2]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def held(params) -> int:
    """Elements of ``params`` this rank holds (a ZeRO-3 parameter: its partition)."""
    return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)


def main(out: Path, zero: int = 2) -> None:
    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000, CACHE, 2048)  # the tests' tiny tokenizer (cached)
    rank = int(os.environ.get("LOCAL_RANK", 0))  # set by Lightning for the rank it starts
    stage = OmegaConf.create({"strategy": {"name": "deepspeed", "config": official_config(zero)}})
    whole = holds_whole_model(stage, rank)
    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tok, meta=not whole)
    built_meta = any(p.is_meta for p in model.parameters())
    strategy = cpu_deepspeed(official_config(zero), model, devices=2)
    module = LlavaLitModule(model, ["connector", "llm"], lr=1e-3, warmup_ratio=0.0, fp32_masters=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, precision="32-true", max_epochs=1, strategy=strategy,
                        accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        default_root_dir=str(out))
    data = RankBatches(text_batches(tok, 2 * MICRO_BATCHES), trainer.global_rank)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    trainer.save_checkpoint(str(out / "checkpoints" / "step-000003.ckpt"))
    if rank == 1:
        (out / "rank1.json").write_text(json.dumps({
            "built_meta": built_meta, "meta_left": any(t.is_meta for t in (*model.parameters(), *model.buffers())),
            "llm_held": held(model.llm.parameters()), "llm_numel": sum(p.numel() if not hasattr(p, "ds_numel")
                                                                       else p.ds_numel for p in model.llm.parameters())}))
    import deepspeed

    # the whole trained LLM (gathered from both ranks' partitions under ZeRO-3: a collective, every rank enters)
    with deepspeed.zero.GatheredParameters(list(model.llm.parameters()), enabled=zero == 3):
        if trainer.is_global_zero:
            torch.save({k: v.detach().clone() for k, v in model.llm.state_dict().items()}, out / "llm.pt")
    if trainer.is_global_zero:
        (out / "result.json").write_text(json.dumps({
            "global_step": trainer.global_step, "engine_steps": trainer.strategy.deepspeed_engine.global_steps,
            "world_size": trainer.world_size}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
