"""Before a strategy shards a model built on the meta device on ranks > 0 (FSDP, DeepSpeed ZeRO-3;
:mod:`lmm.training.stage_model`): every rank's model has rank 0's parameter and buffer names, shapes and dtypes,
or every rank stops with one message naming the first difference."""

from __future__ import annotations

from itertools import zip_longest

from torch import nn


class StrategyError(ValueError):
    """A strategy cannot run as configured (unknown name, unresolved DeepSpeed keys, ranks holding different models)."""


def model_signature(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """Every parameter's and buffer's name, shape and dtype, in order."""
    return [(n, tuple(t.shape), str(t.dtype)) for n, t in (*model.named_parameters(), *model.named_buffers())]


def check_same_model(model: nn.Module, strategy, sharding: str = "FSDP") -> None:
    """Collective, before sharding: every rank's model has rank 0's names, shapes and dtypes (another rank may have
    built it on the meta device from the checkpoints' configs). Every rank raises if one differs."""
    import torch.distributed as dist

    mine = model_signature(model)
    ref = [mine]
    dist.broadcast_object_list(ref, src=0)
    diff = next(((a, b) for a, b in zip_longest(ref[0], mine) if a != b), None)
    if strategy.reduce_boolean_decision(diff is not None, all=False):
        where = f"here {diff[1]}, on rank 0 {diff[0]}" if diff else "(another rank's differs)"
        raise StrategyError(
            f"rank {dist.get_rank()}'s model differs from rank 0's before {sharding} sharding: {where}. A rank other "
            f"than 0 builds the model on the meta device from the checkpoints' configs (lmm.models.build.skeleton): "
            f"report the part named here; meanwhile strategy@stages.<stage>.strategy=ddp loads it whole everywhere.")
