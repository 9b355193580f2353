"""The actor: the trainable policy, its optimizer and schedule, data-parallel across N workers.

A verl single-controller worker (`RayWorkerGroup` of these): the driver calls the group like one
object and the `@register` dispatch modes split batches across ranks (`DP_COMPUTE_PROTO`) or
broadcast calls (`ONE_TO_ALL`). Data parallelism, two strategies (`resources.strategy`):

- "replicate": every rank holds the whole model; each computes the gradient of its shard of the
  batch, gradients are averaged with one all-reduce (gloo on CPU, NCCL on GPUs), then every rank
  takes the same optimizer step, so the replicas stay identical.
- "fsdp2": the model is sharded with torch's `fully_shard` (`dare.workers.sharding`): parameters,
  gradients and optimizer state are split across ranks, forward all-gathers one block at a time
  and backward reduce-scatters the gradients.

The colocated rollout is this worker's `generate`. Replicated, it samples with the actor's own
weights (no copy, no sync); sharded, the ranks unshard the model together for the duration of the
call and reshard after it (no full copy is kept between calls; see `dare.workers.sharding` for
why and for how checkpoints are gathered to rank 0 only). Algorithm logic stays in
`dare.algorithms`; this class only runs it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist
from verl import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register

from dare.algorithms import ALGORITHMS
from dare.models.checkpoint import load_policy, load_policy_skeleton, quiet_progress_bars, save_policy
from dare.models.moe import backward_with_router_losses, router_loss_coefs
from dare.workers import sharding
from dare.workers.builder import build_policy, wrap_lora
from dare.workers.generation import RolloutBackends, generate_batch
from dare.workers.reference import RemoteReference
from dare.workers.state_io import (
    StateFileError,
    check_optimizer_state,
    check_tree,
    has_tree,
    load_tree,
    refuse_pickles,
    save_tree,
)

# training-state files (safetensors + JSON, never pickle): optimizer + lr schedule, algorithm extras
OPTIM_STATE = "optimizer"
ALGORITHM_STATE = "algorithm_state"
# the frozen reference of a stage that re-syncs it (`ref_sync_every`): saved with the training
# state once it differs from the stage's starting policy, so a resumed run continues with it
REFERENCE_STATE = "reference"
# metric set by `update_actor` when it skipped an update whose loss or gradient was not finite
NON_FINITE = "actor/non_finite"


def check_training_state(path: str | Path) -> None:
    """Driver-side check of a `state/step_N` folder before the actor loads it: the optimizer state
    is there, nothing is pickled, manifests and safetensors headers are intact (cheap: no tensor
    data is read). Raises `StateFileError` naming the file."""
    for name in (ALGORITHM_STATE, REFERENCE_STATE):
        refuse_pickles(path, name)
    check_tree(path, OPTIM_STATE)
    for name in (ALGORITHM_STATE, REFERENCE_STATE):
        if has_tree(path, name):
            check_tree(path, name)


def peak_memory_mb(device: str) -> float:
    """Peak accelerator memory of this process (CUDA), else its peak resident set size."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), in MiB."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float):
    """Multiplier of the base lr at optimizer step `s` (0-based)."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


def split_batch(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Split every tensor of a batch along dim 0 into `parts` micro-batches."""
    if parts == 1:
        return [batch]
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: c[i] for k, c in chunks.items()} for i in range(parts)]


@ray.remote
class ActorWorker(Worker):
    def __init__(
        self,
        num_threads: int = 1,
        device: str = "cpu",
        strategy: str = "replicate",
        mixed_precision: str | None = None,
        cpu_offload: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if strategy not in sharding.STRATEGIES:
            raise ValueError(f"strategy must be one of {sharding.STRATEGIES}, got {strategy!r}")
        torch.set_num_threads(num_threads)
        quiet_progress_bars()
        self.device = device
        self.strategy = strategy
        # FSDP2 options (the recipe refuses them without a sharded actor)
        self.shard_options = sharding.ShardOptions(mixed_precision, cpu_offload, device)
        self.activation_checkpointing = activation_checkpointing
        self.model: torch.nn.Module | None = None
        self._skeleton: torch.nn.Module | None = None  # meta-device copy: saving and frozen copies (fsdp2)
        self._init_full_param_bytes = 0  # bytes of unsharded parameters this rank built in init_model
        self._version = 0  # the stage's optimizer updates: the policy version rollouts are tagged with
        self.rollout_backends = RolloutBackends(self._policy, device)  # colocated: they borrow the weights
        self.algorithm = None
        self.optimizer = None
        self.scheduler = None
        self._ref_handle = None  # this rank's partner ReferenceWorker (resources.reference: separate)
        self._frozen_reference = None

    # ------------------------------------------------------------------ set-up

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(
        self, model_spec: dict[str, Any], tokenizer_dir: str, seed: int, init_from: str | None, base_dir: str | None
    ) -> int:
        """Build the policy (identical on every rank: same seed / same checkpoint), from
        `init_from` (a dare checkpoint) or the recipe's model block. With LoRA, a fresh preset's
        weights are first written to `base_dir` (the base its adapters point at). Returns the
        number of trainable parameters.

        Sharded (fsdp2, several workers), only rank 0 builds or loads the full model (on the CPU);
        every rank builds the same module tree on the meta device, shards it and receives rank 0's
        values into its shards (`_init_sharded`), so no other rank ever holds the whole model."""
        from transformers import AutoTokenizer

        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                "nccl" if self.device == "cuda" else "gloo", rank=self.rank, world_size=self.world_size
            )
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.sharded = self.strategy == "fsdp2" and self.world_size > 1
        build = functools.partial(self._build, model_spec, seed, init_from, base_dir)  # build(meta)
        with sharding.track_full_params() as built:  # memory_report's `init_full_param_bytes`
            if self.sharded:
                n_trainable = self._init_sharded(build)
            else:
                model = build(False).to(self.device)
                self.spec = getattr(model, "get_base_model", lambda: model)().diffusion_spec()
                n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                if self.activation_checkpointing:
                    sharding.checkpoint_blocks(model)
                self.model = model
        self._init_full_param_bytes = sum(built)
        return n_trainable

    def _build(
        self, model_spec: dict[str, Any], seed: int, init_from: str | None, base_dir: str | None, meta: bool
    ) -> torch.nn.Module:
        """The policy, LoRA included: loaded / drawn on the CPU, or (`meta`) its module tree on the
        meta device. Rank 0's full build writes a fresh LoRA base to `base_dir`."""
        if init_from:
            model = load_policy_skeleton(init_from) if meta else load_policy(init_from, merge=False)
        else:
            model = build_policy(model_spec, self.tokenizer, seed, meta=meta)
        if model_spec.get("lora") and not hasattr(model, "peft_config"):
            if not meta and self.rank == 0 and base_dir and not (Path(base_dir) / "config.json").is_file():
                save_policy(model, base_dir)
            model = wrap_lora(model, model_spec["lora"], seed)
        return model

    def _init_sharded(self, build: Callable[[bool], torch.nn.Module]) -> int:
        """Every rank builds the policy's module tree on the meta device, rank 0 also the full model
        (CPU). After checking that every rank built the same tree, all shard it (activation
        checkpointing first, fp32 master weights under mixed precision), allocate their shards and
        receive rank 0's values by broadcast, buffers included. Returns the trainable parameters."""
        full, error, signature = None, None, ""
        try:
            model = build(True)
            if self.rank == 0:
                full = build(False)
            if self.shard_options.mixed_precision:  # fp32 master weights (and optimizer state)
                model, full = model.float(), full.float() if full is not None else None
            signature = sharding.tree_signature(model)
            if full is not None and sharding.tree_signature(full) != signature:
                raise ValueError("the policy built on the meta device differs from the loaded one")
        except Exception as e:  # every rank raises, none waits for a broadcast that never comes
            error = e
        sharding.check_ranks_agree(error, signature, self.device)
        self.spec = getattr(model, "get_base_model", lambda: model)().diffusion_spec()
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.activation_checkpointing:
            sharding.checkpoint_blocks(model)
        self._skeleton = sharding.skeleton(model)
        self.model = sharding.shard_model(model, self.shard_options)
        device = "cpu" if self.shard_options.cpu_offload else self.device  # offloaded shards live on the CPU
        sharding.materialize_from_rank0(self.model, full, device, buffer_device=self.device)
        del full
        sharding.copy_buffers(self._skeleton, self.model)  # the skeleton's buffers were meta too
        return n_trainable

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def attach_reference(self, handles: list[Any]) -> None:
        """Use the separate reference workers (one per actor rank): this rank talks to its own."""
        if len(handles) != self.world_size:
            raise ValueError(f"{len(handles)} reference workers for {self.world_size} actor ranks; need one per rank")
        self._ref_handle = handles[self.rank]

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def push_reference(self) -> None:
        """Load the current policy into this rank's partner reference worker (separate reference):
        `init_stage` does it, and the distill trainer before the teacher (the stage's starting
        policy) samples there, which happens before `init_stage`."""
        if self._ref_handle is None:
            raise ValueError("push_reference: no separate reference workers attached (attach_reference)")
        self._push_reference()

    def _push_reference(self) -> None:
        ray.get(self._ref_handle.set_weights.remote(self._full_policy_state()))

    def _full_policy_state(self) -> dict[str, torch.Tensor]:
        """The policy's full state dict (CPU) on every rank (sharded: a collective)."""
        if self.sharded:
            return sharding.full_state_dict(self.model)
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_stage(self, stage: dict[str, Any], args: Any, total_steps: int) -> None:
        """Set the stage's algorithm, a fresh optimizer and the lr schedule."""
        algo_cls = ALGORITHMS.get(stage["algorithm"])
        self.algorithm = algo_cls(args, self.spec)
        self.stage = stage
        self._router_coefs = router_loss_coefs(stage, getattr(self.model, "config", None))  # sharded: still the module
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=stage["lr"], betas=tuple(stage["adam_betas"]), weight_decay=stage["weight_decay"]
        )
        total_updates = total_steps * self.algorithm.updates_per_step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_lambda(stage["lr_schedule"], stage["warmup_steps"], total_updates, stage["min_lr_ratio"]),
        )
        self._version = 0  # counts this stage's updates (a resumed run restores it with the scheduler)
        self.reference = None
        self._frozen_reference = None
        if self.algorithm.needs_reference and self._ref_handle is not None:
            self._push_reference()  # the stage's starting policy, as the colocated frozen copy takes it
            self.reference = self._reference
        elif self.algorithm.needs_reference:
            if not hasattr(self.model, "disable_adapter"):
                if self.sharded:  # a sharded frozen copy of the current weights, shard by shard
                    frozen = sharding.sharded_copy(self._skeleton, self.model, self.shard_options)
                    self._frozen_reference = frozen.eval()
                else:
                    self._frozen_reference = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.reference = self._reference
        self._ref_syncs = 0  # reference syncs so far in this stage

    # ------------------------------------------------------------------ training

    def _tensors(self, data: DataProto) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in data.batch.items()}

    def _all_reduce_grads(self) -> None:
        if self.world_size == 1 or self.sharded:  # fsdp2 reduce-scatters in backward
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])  # one collective instead of one per tensor
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: v / self.world_size for k, v in zip(keys, t.tolist())}

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_grad(self, data: DataProto) -> DataProto:
        """Gradient of the algorithm's loss on this batch (all-reduced), without a step. Used to
        check data parallelism; returns the flat gradient."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self._loss_backward(self._tensors(data), 1)
        self._all_reduce_grads()
        grads = [sharding.full_tensor(p.grad) for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads]).cpu()
        return DataProto.from_dict(tensors={"grad": flat[None].repeat(len(data), 1)})

    def _loss_backward(self, micro: dict[str, torch.Tensor], accum: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Backpropagate the objective's loss / `accum` plus the MoE router terms of its forwards
        (unchanged for dense models), in the parts the algorithm hands over (`loss_backward`: the
        whole loss at once, or BGPO's per-sample terms); returns the detached loss and metrics."""
        return backward_with_router_losses(
            lambda part_backward: self.algorithm.loss_backward(self.model, micro, part_backward),
            lambda part: (part / accum).backward(),
            *self._router_coefs,
        )

    def _non_finite(self, bad_loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether any rank's loss or the (global) gradient norm is NaN/inf. One all-reduced flag,
        so every rank takes the same decision (a rank that stopped alone would hang the others)."""
        flag = bad_loss + (~torch.isfinite(grad_norm.detach())).float().to(bad_loss.device)
        if self.world_size > 1:
            dist.all_reduce(flag)
        return bool(flag > 0)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def update_actor(self, data: DataProto) -> DataProto:
        """One trainer step on this rank's shard: the algorithm's updates (1 for SFT, mu for
        GRPO), each in `grad_accum` micro-batches with an all-reduce and an optimizer step. An
        update whose loss (any rank's) or gradient is not finite is not applied: the step stops
        there and reports `actor/non_finite` = 1 (the trainer loop then stops the run)."""
        t0 = time.perf_counter()
        accum = self.stage["grad_accum"]
        batch = self._tensors(data)
        self.algorithm.check_batch(batch)  # a trainer / algorithm mismatch fails before any forward pass
        self.model.eval()  # no dropout in the old/reference passes
        updates = self.algorithm.prepare(self.model, self.reference, batch)
        self.model.train()
        sums: dict[str, float] = {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr = self.scheduler.get_last_lr()[0]
        for update in updates:
            self.optimizer.zero_grad(set_to_none=True)
            bad_loss = torch.zeros((), device=self.device)
            for i, micro in enumerate(split_batch(update, accum)):
                if self.sharded:  # reduce-scatter once per update, on the last micro-batch
                    self.model.set_requires_gradient_sync(i == accum - 1)
                loss, metrics = self._loss_backward(micro, accum)
                bad_loss += (~torch.isfinite(loss)).float()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / (accum * len(updates))
            self._all_reduce_grads()
            grad_norm = sharding.full_tensor(torch.nn.utils.clip_grad_norm_(params, self.stage["grad_clip"]))
            sums["actor/grad_norm"] = sums.get("actor/grad_norm", 0.0) + float(grad_norm) / len(updates)
            lr = self.scheduler.get_last_lr()[0]
            if self._non_finite(bad_loss, grad_norm):  # never step on NaN/inf: the weights stay finite
                self.optimizer.zero_grad(set_to_none=True)
                sums[NON_FINITE] = 1.0
                break
            self.optimizer.step()
            self.scheduler.step()
            self._version += 1
            self._maybe_sync_reference()
        # real tokens of every sequence in the batch (preference batches: chosen_ and rejected_)
        tokens = float(sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask")))
        metrics = self._mean_metrics(sums)
        elapsed = time.perf_counter() - t0
        metrics.update(
            {
                "actor/lr": lr,
                "perf/update_s": elapsed,
                # tokens processed by all ranks per second of update time
                "perf/tokens_per_s": tokens * self.world_size * len(updates) / elapsed,
                "perf/max_memory_mb": peak_memory_mb(self.device),
            }
        )
        if self.algorithm.reference_sync[0]:
            metrics["actor/ref_syncs"] = float(self._ref_syncs)
        return DataProto(meta_info={"metrics": metrics})

    def _maybe_sync_reference(self) -> None:
        """After the stage's N-th, 2N-th ... optimizer update (the scheduler's count, which a
        resumed run restores), ref <- alpha * policy + (1 - alpha) * ref, parameter by parameter.
        Sharded, both models are sharded alike, so each rank updates its own shards."""
        every, alpha = self.algorithm.reference_sync
        if not every or self.scheduler.last_epoch % every:
            return
        if self._ref_handle is not None:  # the separate reference: each rank updates its partner
            ray.get(self._ref_handle.mix.remote(self._full_policy_state(), alpha))
            self._ref_syncs += 1
            return
        if self._frozen_reference is None:  # refused at recipe load (LoRA); guard direct callers
            raise ValueError("ref_sync_every needs a frozen-copy reference (no LoRA) and beta > 0")
        if self.sharded:  # a root kept unsharded after its last forward: back to the registered shards
            sharding.reshard(self.model)
            sharding.reshard(self._frozen_reference)
        policy = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, ref in self._frozen_reference.named_parameters():
                if alpha == 1.0:
                    ref.copy_(policy[name])
                else:
                    ref.mul_(1.0 - alpha).add_(policy[name], alpha=alpha)
        self._ref_syncs += 1

    def _reference_state(self) -> dict[str, torch.Tensor] | None:
        """The synced reference's full state dict (CPU) on rank 0; None when it never moved."""
        if self._ref_handle is not None:
            return ray.get(self._ref_handle.state.remote()) if self._ref_syncs and self.rank == 0 else None
        if self._frozen_reference is None or not self._ref_syncs:
            return None
        if self.sharded:
            sd = sharding.full_state_dict(self._frozen_reference, rank0_only=True)
        else:
            sd = {k: v.detach().cpu() for k, v in self._frozen_reference.state_dict().items()}
        return sd if self.rank == 0 else None

    def _load_reference_state(self, loaded: dict[str, torch.Tensor]) -> None:
        if self._ref_handle is not None:
            ray.get(self._ref_handle.set_weights.remote(loaded))
        elif self.sharded:
            sharding.load_full_state_dict(self._frozen_reference, loaded)
        else:
            self._frozen_reference.load_state_dict(loaded)
        self._ref_syncs = max(1, self._ref_syncs)

    @contextlib.contextmanager
    def _reference(self):
        """The reference policy: the model with its LoRA adapter disabled, or a frozen copy of
        the policy taken at the start of the stage; separate (`resources.reference`), a stand-in
        whose forward runs on this rank's reference worker."""
        if self._ref_handle is not None:
            yield RemoteReference(self._ref_handle, self.device, self.spec, template=lambda: self.model)
        elif self._frozen_reference is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self._frozen_reference

    # ------------------------------------------------------------------ rollout (colocated)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def generate(self, data: DataProto) -> DataProto:
        """Sample responses for left-padded prompts with the actor's own weights (through the rollout
        backend the request names). Sharded, every rank unshards the model for this call only
        (`sharding.unsharded`): the sampling itself issues no collective, so ranks may stop after
        different numbers of forwards."""
        backend = self.rollout_backends.get(data, self._version)
        with sharding.unsharded(self.model) if self.sharded else contextlib.nullcontext():
            out = generate_batch(backend, data, self.rank)
        dtype = next(self.model.parameters()).dtype
        out.meta_info["dtype"] = str(dtype).removeprefix("torch.")  # the eval reports it
        return out

    def _policy(self) -> torch.nn.Module:
        """The current policy module (what the colocated rollout backend borrows)."""
        return self.model

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def get_weights(self) -> dict[str, torch.Tensor] | None:
        """The policy's full state dict (CPU) on rank 0 (None elsewhere), for syncing a separate
        rollout worker. All ranks take part (gathering a sharded model is a collective)."""
        if self.sharded:
            sd = sharding.full_state_dict(self.model, rank0_only=True)
        else:
            sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return sd if self.rank == 0 else None

    # ------------------------------------------------------------------ checkpoints

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_state(self, path: str, base_dir: str | None, with_optimizer: bool = True) -> None:
        """Rank 0 writes the policy (HF folder or PEFT adapter) and the optimizer/scheduler state
        (`optimizer.safetensors` + `optimizer.json`, no pickle). Sharded, both are gathered into
        full (unsharded) form first, so the files are the same whatever the strategy and number of
        workers; only rank 0 ever holds them whole (gathered tensor by tensor to its CPU). Weights
        that are not finite are never written (every rank raises)."""
        self._check_finite(path)
        model = self.model
        if self.sharded:
            state = sharding.full_state_dict(self.model, rank0_only=True)
            model = sharding.with_state(self._skeleton, state) if self.rank == 0 else None
        optim = None
        if with_optimizer and self.optimizer is not None:
            optim = (
                sharding.full_optimizer_state(self.model, self.optimizer)
                if self.sharded
                else self.optimizer.state_dict()
            )
        reference = self._reference_state() if with_optimizer and self.algorithm is not None else None
        if self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            save_policy(model, path, base_dir)
            if optim is not None:
                state = {"optimizer": optim, "scheduler": self.scheduler.state_dict(), "strategy": self.strategy}
                save_tree(state, path, OPTIM_STATE)
            if reference is not None:
                save_tree(reference, path, REFERENCE_STATE)
            extra = getattr(self.algorithm, "extra_state", lambda: None)()  # e.g. DiDi's discriminator
            if extra is not None:
                save_tree(extra, path, ALGORITHM_STATE)
        if self.world_size > 1:
            dist.barrier()

    def _check_finite(self, path: str) -> None:
        """Raise on every rank when any rank's weights (its shards, when sharded) hold NaN/inf."""
        params = self.model.named_parameters()
        bad = [n for n, p in params if not bool(torch.isfinite(sharding.local(p).detach()).all())]
        flag = torch.tensor([float(len(bad))])
        if self.sharded:
            dist.all_reduce(flag)
        if flag.item():
            where = ", ".join(bad[:3]) or "another rank's shards"
            raise ValueError(f"{path}: not saved: non-finite (NaN/inf) weights in {where}")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_state(self, path: str) -> None:
        """Load policy weights and the optimizer/scheduler state (required once a stage's
        optimizer exists: a resumed step must continue the same Adam moments) on every rank.
        Nothing is unpickled: a pickled or malformed state file raises `StateFileError`."""
        refuse_pickles(path, OPTIM_STATE)
        refuse_pickles(path, ALGORITHM_STATE)
        if self.sharded:  # rank 0 reads the checkpoint, the others receive their shards
            loaded = load_policy(path, merge=False).state_dict() if self.rank == 0 else {}
            sharding.load_full_state_dict(self.model, loaded, from_rank0=True)
            del loaded
        else:
            self.model.load_state_dict(load_policy(path, merge=False).state_dict())
        if self.optimizer is not None:
            state = load_tree(path, OPTIM_STATE)
            optim = Path(path) / f"{OPTIM_STATE}.json"
            if not isinstance(state, dict) or not {"optimizer", "scheduler"} <= set(state):
                raise StateFileError(f"{optim}: expected the keys 'optimizer' and 'scheduler'")
            saved_strategy = state.get("strategy", "replicate")
            if (saved_strategy == "fsdp2") != self.sharded:
                raise ValueError(
                    f"{optim}: optimizer state written with strategy {saved_strategy!r}; "
                    f"this run uses {self.strategy!r} with {self.world_size} worker(s)"
                )
            try:
                if self.sharded:
                    sharding.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
                else:
                    check_optimizer_state(self.optimizer, state["optimizer"])
                    self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self._version = int(self.scheduler.last_epoch)  # the updates the saved run had taken
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise StateFileError(f"{optim}: does not fit this stage's optimizer ({e})") from None
        has_reference = self._frozen_reference is not None or (
            self._ref_handle is not None and getattr(self, "reference", None) is not None
        )
        if has_tree(path, REFERENCE_STATE) and has_reference:
            self._load_reference_state(load_tree(path, REFERENCE_STATE))
        if has_tree(path, ALGORITHM_STATE) and hasattr(self.algorithm, "load_extra_state"):
            self.algorithm.load_extra_state(load_tree(path, ALGORITHM_STATE))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def state_checksum(self) -> float:
        """Sum of all parameters (replicas must agree; sharded parameters gathered)."""
        return float(sum(sharding.full_tensor(p.detach()).double().sum() for p in self.model.parameters()))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def memory_report(self) -> dict[str, float]:
        """This rank's bytes of parameters, gradients and optimizer state (its local shards when
        sharded), the bytes of the whole model, the number of parameters held in full by any
        module of this worker (0 when sharded: no unsharded copy is kept between calls), the bytes
        of unsharded parameters this rank materialised while building the policy (sharded: only
        rank 0's, the others build on the meta device), and the process's current and peak resident
        memory in MiB."""
        params = list(self.model.parameters()) if self.model is not None else []
        moments = [t for s in (self.optimizer.state.values() if self.optimizer else ()) for t in s.values()]
        modules = [m for m in vars(self).values() if isinstance(m, torch.nn.Module)]
        held = {id(p): p for m in modules for p in m.parameters()}.values()
        full = [p for p in held if not isinstance(p, sharding.DTensor) and p.device.type != "meta"]
        return {
            "param_bytes": sharding.local_bytes(params),
            "grad_bytes": sharding.local_bytes(p.grad for p in params if p.grad is not None),
            "optim_bytes": sharding.local_bytes(t for t in moments if isinstance(t, torch.Tensor)),
            "model_bytes": sum(p.numel() * p.element_size() for p in params),  # a DTensor's numel is global
            "full_params": len(full),
            "init_full_param_bytes": self._init_full_param_bytes,
            "rss_mb": current_rss_mb(),
            "peak_rss_mb": peak_memory_mb("cpu"),
        }

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def reference_checksum(self) -> float:
        """Sum of the frozen reference's parameters (sharded ones gathered)."""
        if self._ref_handle is not None:
            return ray.get(self._ref_handle.checksum.remote())
        ref = self._frozen_reference
        return float(sum(sharding.full_tensor(p.detach()).double().sum() for p in ref.parameters()))


__all__ = ["ActorWorker", "lr_lambda"]
