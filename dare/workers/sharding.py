"""FSDP2 sharding of the actor (torch `fully_shard`), without a full unsharded copy per rank.

With `resources.strategy: fsdp2` each data-parallel rank holds 1/N of every parameter, gradient
and optimizer state. `fully_shard` is applied to every decoder block (the classes the model lists
in transformers' `_no_split_modules`, i.e. the units a checkpoint must not split) and then to the
root, so a forward all-gathers one block at a time and backward reduce-scatters its gradients;
no manual gradient all-reduce is needed.

No rank keeps the whole model between calls:

- Start (`materialize_from_rank0`): only rank 0 builds or loads the full model (CPU); every rank
  builds the same module tree on the meta device, shards it, allocates its shards (`to_empty`)
  and receives rank 0's values by broadcast, one tensor at a time (buffers included), after
  `check_ranks_agree` made sure every rank built the same tree and none failed.
- Rollouts (`unsharded`): sampling is data-dependent (sequences stop at EOS, threshold decoding
  takes a variable number of steps), so ranks run different numbers of forwards; on a sharded
  model each forward is a collective and that would deadlock. So all ranks all-gather every FSDP
  module once, together, at the start of a generate call (with reshard-after-forward off, each
  rank's forwards then touch only local full tensors: no collective), and the modules are
  resharded when it returns. The full weights exist only for the duration of that call.
- Checkpoints (`full_state_dict(rank0_only=True)`, `full_optimizer_state`): gathered one tensor
  at a time to CPU on rank 0 only; rank 0 writes them through a meta-device skeleton of the
  model (`skeleton`, no weight memory) so the files are the same HF folders as an unsharded run.
  Loading reads the checkpoint on rank 0 and broadcasts it into the shards.
- The frozen reference (`sharded_copy`): a second sharded model built from the skeleton whose
  local shards are copied from the policy's (no gather).

Options (recipe `resources.*`): FSDP2 mixed precision (`MixedPrecisionPolicy`: bf16 compute,
fp32 gradient reduction, fp32 master parameters and optimizer state), CPU offload of the shards,
gradients and optimizer state (`CPUOffloadPolicy`), and activation checkpointing of the decoder
blocks (torch's composable `checkpoint`, which keeps parameter names, so checkpoints are unchanged).
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.modules.module import register_module_parameter_registration_hook

STRATEGIES = ("replicate", "fsdp2")
# `resources.mixed_precision` values -> FSDP2 compute (all-gather) dtype
MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ShardOptions:
    """How `shard_model` shards: compute dtype (None = the parameters' own), CPU offload."""

    mixed_precision: str | None = None
    cpu_offload: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {sorted(MIXED_PRECISION)} or None, got {self.mixed_precision!r}"
            )

    def fully_shard_kwargs(self) -> dict:
        kwargs: dict = {}
        if self.mixed_precision:
            dtype = MIXED_PRECISION[self.mixed_precision]
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if self.cpu_offload:  # pinned host memory needs an accelerator
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=self.device == "cuda")
        return kwargs


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


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Activation checkpointing of every decoder block (recomputed in backward). The composable
    API adds hooks, not wrapper modules, so parameter names (and checkpoints) do not change; it
    composes with `fully_shard` when applied first."""
    from torch.distributed._composable import checkpoint

    for block in decoder_blocks(model):
        checkpoint(block)
    return model


def shard_model(model: nn.Module, options: ShardOptions | None = None) -> nn.Module:
    """`fully_shard` every decoder block, then the root (in place; returns the model). Blocks
    reshard after forward, the root (embeddings, head: used first in backward) does not."""
    kwargs = (options or ShardOptions()).fully_shard_kwargs()
    for block in decoder_blocks(model):
        fully_shard(block, reshard_after_forward=True, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard(model: nn.Module) -> None:
    """Register the sharded parameters of every FSDP module of `model` (frees unsharded ones
    kept after a forward without backward, e.g. the root's), so parameters are DTensor shards."""
    for m in fsdp_modules(model):
        m.reshard()


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """All FSDP modules of `model` unsharded for the body, which may then run any number of
    forwards without a collective (ranks may differ in how many). Entering and leaving are
    collectives (every rank enters). On exit the iteration state that the body's forwards
    recorded (post-forward order, used for backward prefetching, which differs per rank) is
    cleared and every module resharded, so the next training step starts as after a step."""
    modules = fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for m in modules:
            m.unshard()
        yield model
    finally:
        model.reset_iter_state()  # reshards every module, clears the forwards' per-rank records
        for m in modules:  # back to `shard_model`'s settings
            m.set_reshard_after_forward(m is not model, recurse=False)


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of the (unsharded) model whose parameters are on the meta device (no memory;
    buffers, e.g. rotary tables, are real): the shape to write checkpoints through and to build
    more sharded copies from. Tied parameters stay tied."""
    memo = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def with_state(skel: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A model of the skeleton's class holding `state`'s tensors (assigned, not copied)."""
    model = copy.deepcopy(skel)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def sharded_copy(skel: nn.Module, model: nn.Module, options: ShardOptions | None = None) -> nn.Module:
    """A frozen sharded copy of sharded `model` (same sharding), built from its skeleton: each
    rank copies its own shards, nothing is gathered."""
    options = options or ShardOptions()
    copy_ = shard_model(copy.deepcopy(skel).requires_grad_(False), options)
    # to_empty replaces buffers too (e.g. rotary tables): put the skeleton's real ones back
    buffers = [(m, k, b) for m in copy_.modules() for k, b in m._buffers.items() if b is not None]
    copy_.to_empty(device="cpu" if options.cpu_offload else options.device)  # offloaded shards live on the CPU
    for m, k, b in buffers:
        m._buffers[k] = b
    reshard(model)  # a root kept unsharded after its last forward: back to the registered shards
    source = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in copy_.named_parameters():
            local(p).copy_(local(source[name]))
    return copy_


def tree_signature(model: nn.Module) -> str:
    """Name, shape, dtype and trainability of every parameter and buffer: two ranks that built the
    same module tree have the same signature (the meta-device build and rank 0's loaded model too)."""
    params = (f"{n}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}" for n, p in model.named_parameters())
    buffers = (f"{n}:{tuple(b.shape)}:{b.dtype}" for n, b in model.named_buffers())
    return ";".join([*params, *buffers])


def check_ranks_agree(error: Exception | None, signature: str, device: str = "cpu") -> None:
    """Collective: raise on every rank when any rank's build failed (`error`: this rank's) or the
    ranks' module trees differ, so no rank is left waiting in the broadcast of the weights."""
    crc = zlib.crc32(signature.encode())
    flags = torch.tensor([int(error is not None), crc, -crc], dtype=torch.int64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if flags[0]:
        raise RuntimeError("another rank failed to build the policy (its own error names the cause)")
    if flags[1] != -flags[2]:
        raise ValueError("the ranks built different module trees for the policy (same recipe and checkpoint?)")


def materialize_from_rank0(
    model: nn.Module, full: nn.Module | None, device: str, buffer_device: str | None = None
) -> None:
    """Give a sharded model built on the meta device (every rank) the values of rank 0's full model
    (`full`; None on the other ranks): the shards are allocated on `device` (`to_empty`), then rank
    0's state dict is broadcast into them one tensor at a time (no rank but 0 ever holds the whole
    model), and the buffers outside the state dict (non-persistent ones, computed at init, which
    `to_empty` leaves uninitialised) are broadcast from rank 0's model too. Buffers are not
    sharded nor offloaded: they end on `buffer_device` (default `device`), where the forward runs."""
    model.to_empty(device=device)
    # the state dict is loaded with every tensor on one device (torch refuses a mix), then moved
    load_full_state_dict(model, full.state_dict() if full is not None else {}, from_rank0=True)
    for module_name, module in model.named_modules():
        for key, buf in list(module._buffers.items()):
            if buf is None:
                continue
            buf = module._buffers[key] = buf.to(buffer_device or device)
            if key in module._non_persistent_buffers_set:
                if full is not None:
                    buf.copy_(full.get_submodule(module_name)._buffers[key])
                dist.broadcast(buf, src=0)


def copy_buffers(skel: nn.Module, model: nn.Module) -> None:
    """Give a skeleton built from a meta-device model the (real) buffers of `model`, the sharded
    model it describes (buffers are not sharded): `with_state` and `sharded_copy` take them from it."""
    buffers = dict(model.named_buffers())
    for module_name, module in skel.named_modules():
        for key, buf in module._buffers.items():
            if buf is not None:
                name = f"{module_name}.{key}" if module_name else key
                module._buffers[key] = buffers[name].detach().clone()


@contextlib.contextmanager
def track_full_params() -> Iterator[list[int]]:
    """Record the bytes of every materialised unsharded parameter (not on the meta device, not a
    DTensor shard) that any module of this process registers while the body runs: how much of
    the model a rank built in full."""
    sizes: list[int] = []

    def hook(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not isinstance(param, DTensor) and not param.is_meta:
            sizes.append(param.numel() * param.element_size())

    handle = register_module_parameter_registration_hook(hook)
    try:
        yield sizes
    finally:
        handle.remove()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or `t` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def local_bytes(tensors) -> int:
    """Bytes this rank holds of `tensors` (local shards of DTensors)."""
    return sum(local(t).numel() * local(t).element_size() for t in tensors)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (a collective), or `t` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU, keys as in the unsharded model. A collective: every rank
    calls it; with `rank0_only` the tensors are gathered one at a time to rank 0's CPU and the
    other ranks get an empty dict (no rank but 0 ever holds the whole model)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    sd = get_model_state_dict(model, options=opts)
    return {k: v.detach().cpu() for k, v in sd.items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor], from_rank0: bool = False) -> None:
    """Load an unsharded state dict into a sharded model: every rank passes the full dict, or
    (`from_rank0`) rank 0 does and the others pass {} and receive it by broadcast."""
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0)
    set_model_state_dict(model, state, options=opts)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter names, unsharded, on rank 0 (collective)."""
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


__all__ = [
    "DTensor",
    "MIXED_PRECISION",
    "STRATEGIES",
    "ShardOptions",
    "check_ranks_agree",
    "checkpoint_blocks",
    "copy_buffers",
    "fsdp_modules",
    "local",
    "local_bytes",
    "materialize_from_rank0",
    "sharded_copy",
    "skeleton",
    "track_full_params",
    "tree_signature",
    "unsharded",
    "with_state",
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
