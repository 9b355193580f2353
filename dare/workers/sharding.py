"""FSDP2 sharding of the actor (torch `fully_shard`) and the full-state-dict helpers around it.

With `resources.strategy: fsdp2` each data-parallel rank holds 1/N of every parameter, gradient
and optimizer state. `fully_shard` is applied to every decoder block (the classes the model lists
in transformers' `_no_split_modules`, i.e. the units a checkpoint must not split) and then to the
root, so a forward all-gathers one block at a time and backward reduce-scatters its gradients;
no manual gradient all-reduce is needed.

Everything that leaves the trainer goes through full (unsharded) state dicts, gathered
collectively by all ranks: checkpoints (model + optimizer, so a resumed run or a run with another
strategy can read them) and the weights of the plain copy the colocated rollout samples with.
Sampling is data-dependent (sequences stop at EOS, threshold decoding takes a variable number of
steps), so ranks would issue different numbers of forwards; on a sharded model each forward is a
collective and that would deadlock. The rollout therefore uses an unsharded copy refreshed from
the full state dict after each update, as verl's hybrid engine does for its inference engine.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

STRATEGIES = ("replicate", "fsdp2")


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "get_base_model", lambda: model)()  # through a PEFT wrapper


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks: modules whose class is in `_no_split_modules`."""
    names = set(getattr(_base(model), "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(_base(model)).__name__} does not list its decoder block class in _no_split_modules")
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"no module of class {sorted(names)} found in {type(_base(model)).__name__}")
    return blocks


def shard_model(model: nn.Module, param_dtype: torch.dtype | None = None) -> nn.Module:
    """`fully_shard` every decoder block, then the root (in place; returns the model).

    `param_dtype` (e.g. bf16) is the compute dtype of FSDP's mixed precision; gradients are
    reduced in fp32."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mp_policy": mp} if mp else {}
    for block in decoder_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Register the sharded parameters of every FSDP module of `model` (frees unsharded ones
    kept after a forward without backward, e.g. the root's), so parameters are DTensor shards."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (a collective), or `t` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU, keys as in the unsharded model. A collective: every rank
    calls it; with `rank0_only` the other ranks get an empty dict (less memory)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    sd = get_model_state_dict(model, options=opts)
    return {k: v.detach().cpu() for k, v in sd.items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict (every rank passes the full dict) into a sharded model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter names, unsharded, on rank 0 (collective)."""
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


__all__ = [
    "STRATEGIES",
    "decoder_blocks",
    "full_optimizer_state",
    "full_state_dict",
    "full_tensor",
    "is_sharded",
    "load_full_optimizer_state",
    "load_full_state_dict",
    "reshard",
    "shard_model",
]
