"""The separate rollout role: a copy of the policy that only samples, synced from the actor after
each update (`resources.rollout: separate`). The default is the colocated rollout, the actor's own
`generate`, which shares its weights and needs no sync."""

from __future__ import annotations

from typing import Any

import ray
import torch
from verl import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register

from dare.models.checkpoint import quiet_progress_bars
from dare.workers.builder import build_replica
from dare.workers.generation import RolloutBackends, generate_batch


@ray.remote
class RolloutWorker(Worker):
    def __init__(self, num_threads: int = 1, device: str = "cpu") -> None:
        super().__init__()
        torch.set_num_threads(num_threads)
        quiet_progress_bars()
        self.device = device
        self.model: torch.nn.Module | None = None
        # (not `self.backends`: cloudpickle would take it for the torch.backends submodule)
        self.rollout_backends: RolloutBackends | None = None
        self.version = 0  # weight syncs received

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self, model_spec: dict[str, Any], tokenizer_dir: str, seed: int, init_from: str | None) -> None:
        """The same module structure as the actor's (LoRA included), so its state dict loads as is."""
        self.model = build_replica(model_spec, tokenizer_dir, seed, init_from).to(self.device).eval()
        self.rollout_backends = RolloutBackends(lambda: self.model, self.device)  # they borrow (or copy) this model

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_weights(self, state: dict[str, torch.Tensor], version: int | None = None) -> None:
        """Load the actor's weights into the worker's copy and every backend built on it."""
        self.version = self.version + 1 if version is None else int(version)
        self.model.load_state_dict(state)
        self.rollout_backends.sync(self.version)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def release_rollout(self) -> None:
        """Free the backends' device memory while the actor trains."""
        self.rollout_backends.release()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def resume_rollout(self) -> None:
        self.rollout_backends.resume()

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def generate(self, data: DataProto) -> DataProto:
        return generate_batch(self.rollout_backends.get(data, self.version), data, self.rank)


__all__ = ["RolloutWorker"]
