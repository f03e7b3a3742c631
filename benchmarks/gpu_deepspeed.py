"""DeepSpeed as a training run uses it, on one device: ``python benchmarks/gpu_step.py --deepspeed`` (CUDA, real size)
or ``--device cpu --toy --deepspeed`` (the tiny twins, seconds).

Two checks, each printing one line that starts ``deepspeed ...: ok`` (or stopping with ``FAILED``):

* **accumulation** — stage 2 (connector + LLM) of the model, accumulation 2 over epochs of 5 micro-batches (windows
  2, 2, 1), 2 epochs, under lmm's DeepSpeed strategy (``conf/strategy/deepspeed_zero2.yaml`` resolved as a run
  resolves it) and under the plain strategy (``auto``: bf16 autocast with fp32 masters on CUDA): both make 6
  optimizer steps (the engine too), and each step's gradient norm (DeepSpeed's ``safe_get_full_grad``) matches the
  plain run's — within 10 % in bf16 on CUDA, 0.1 % on the CPU (fp32 but for the bf16 tower). Gradients scaled twice
  give a ratio of 0.5; an engine stepping by its own counter, 5 steps.
* **checkpoint** — the DeepSpeed run saved as a step checkpoint folder: ``lmm_complete.json`` records every rank's
  shard, :func:`~lmm.training.checkpointing.validate_checkpoint` accepts it, and consolidation (its loads forced
  weights-only) gives the trained fp32 masters of every trainable tensor.

On the CPU, Lightning's ``DeepSpeedStrategy`` makes two CUDA-only checks before the engine starts (the accelerator
must be CUDA; each rank's device must carry an index): :func:`deepspeed_strategy` passes them with CPU devices
indexed like GPUs; the rest — Lightning's loops, DeepSpeed's engine on its CPU accelerator (gloo), its checkpoint
writer and reader — is the code a GPU run executes. ``tests/training/test_deepspeed_cpu.py`` uses the same helpers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch

CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"


def deepspeed_strategy(config: dict, model, device: torch.device, precision: str, devices: int = 1):
    """lmm's DeepSpeed strategy (:func:`lmm.training.strategies.build_deepspeed`) for ``config`` (a stage's JSON)."""
    from lmm.training.strategies import build_deepspeed

    if device.type == "cuda":
        return build_deepspeed({"config": config}, model, micro_batch_size=2, precision=precision)
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = build_deepspeed({"config": config}, model, micro_batch_size=2, precision=precision,
                               parallel_devices=[torch.device("cpu", i) for i in range(devices)])

    class CPUDeepSpeed(type(strategy)):
        def setup_environment(self) -> None:  # Lightning's check that the accelerator is CUDA, skipped
            super(DeepSpeedStrategy, self).setup_environment()

    strategy.__class__ = CPUDeepSpeed
    return strategy


class StepGradients(L.Callback):
    """The trainable LLM's full gradient at each optimizer step (under DeepSpeed ``safe_get_full_grad``, valid
    between the step's last backward and the engine's step)."""

    def __init__(self):
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for p in pl_module.model.llm.parameters() if p.requires_grad]
        if hasattr(trainer.strategy, "deepspeed_engine"):
            from deepspeed.utils import safe_get_full_grad

            if not trainer.strategy.deepspeed_engine.is_gradient_accumulation_boundary():
                return  # the engine will not step here (Lightning's own DeepSpeedStrategy calls this every micro-batch)
            grads = [safe_get_full_grad(p) for p in params]
        else:
            grads = [p.grad for p in params]
        self.grads.append(torch.cat([g.detach().float().flatten().cpu() for g in grads]))


def fit(model, batches, strategy, root, accumulation=1, epochs=1, precision="32-true", callbacks=(),
        ckpt_path=None, device: torch.device | None = None):
    """A stage-2 fit of ``model`` (connector + LLM train) over ``batches`` in order, on ``device`` (default the
    CPU); (trainer, module)."""
    from lmm.training.module import LlavaLitModule

    device = device or torch.device("cpu")
    module = LlavaLitModule(model, ["connector", "llm"], lr=1e-3, warmup_ratio=0.0,
                            fp32_masters=strategy == "auto")  # DeepSpeed keeps its own
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, max_epochs=epochs,
                        strategy=strategy, accumulate_grad_batches=accumulation, callbacks=list(callbacks),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(root))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None),
                **({"ckpt_path": str(ckpt_path), "weights_only": True} if ckpt_path else {}))
    return trainer, module


def official_config(stage: int = 2) -> dict:
    """``conf/strategy/deepspeed_zero<stage>.yaml``'s JSON (LLaVA's zero2.json / zero3.json, ``"auto"`` left)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF / f"deepspeed_zero{stage}.yaml"))["config"]


def check_deepspeed(model, batches, device: torch.device, root: Path) -> list[str]:
    """The two checks of the module docstring on a copy of ``model``; their lines (SystemExit on a failure)."""
    from lmm.training.checkpointing import consolidate_deepspeed, load_trainable_state, validate_checkpoint

    cuda = device.type == "cuda"
    precision, tolerance = ("bf16-mixed", 0.1) if cuda else ("32-true", 1e-3)
    plain, ds = StepGradients(), StepGradients()
    ref_model, ds_model = copy.deepcopy(model), copy.deepcopy(model)
    ref, _ = fit(ref_model, batches, "auto", root / "plain", 2, 2, precision, [plain], device=device)
    strategy = deepspeed_strategy(official_config(2), ds_model, device, precision)
    trainer, module = fit(ds_model, batches, strategy, root / "deepspeed", 2, 2, precision, [ds], device=device)
    engine_steps = trainer.strategy.deepspeed_engine.global_steps
    ratios = [float(a.norm() / b.norm()) for a, b in zip(ds.grads, plain.grads)]
    steps = (ref.global_step, trainer.global_step, engine_steps, len(ds.grads))
    if steps != (6, 6, 6, 6) or not all(abs(r - 1) <= tolerance for r in ratios):
        raise SystemExit(f"deepspeed accumulation: FAILED — steps (plain, deepspeed, engine, gradients seen) {steps}, "
                         f"expected 6 each; gradient norm ratios deepspeed/plain {[round(r, 4) for r in ratios]}")
    lines = [f"deepspeed accumulation: ok — accumulation 2 over 2 epochs of 5 micro-batches: 6 optimizer steps "
             f"(engine 6); gradient norm ratio deepspeed/plain per step {min(ratios):.4f}..{max(ratios):.4f} "
             f"(double scaling would give 0.5)"]
    folder = root / "checkpoints" / "step-000006.ckpt"
    trainer.save_checkpoint(str(folder))
    validate_checkpoint(folder)
    state = load_trainable_state(consolidate_deepspeed(folder))
    masters = {f"model.{n}": p for n, p in module.model.named_parameters() if p.requires_grad}
    if set(state) != set(masters) or any(v.dtype != torch.float32 for v in state.values()):
        raise SystemExit(f"deepspeed checkpoint: FAILED — consolidated {len(state)} tensors, {len(masters)} train")
    diff = max((state[k] - masters[k].detach().float().cpu()).abs().max().item() for k in state)
    if diff > (1e-2 if cuda else 1e-6):  # the module holds bf16 copies of the masters on CUDA
        raise SystemExit(f"deepspeed checkpoint: FAILED — consolidated weights differ from the module's by {diff}")
    lines.append(f"deepspeed checkpoint: ok — every rank's shard recorded (lmm_complete.json), validated, "
                 f"consolidated weights-only: {len(state)} fp32 tensors, max |consolidated − module| {diff:.2e}")
    return lines
