"""The separate reference role (`resources.reference: separate`): the frozen reference policy in its
own Ray worker group, one reference rank per actor rank. The default (`colocated`) keeps it inside
the actor (a frozen copy, or the LoRA model with its adapter disabled).

The algorithm never learns where the reference lives: `prepare` gets the same `reference()`
context manager either way. Separate, it yields a `RemoteReference`, a module-like stand-in whose
forward runs on the actor rank's partner reference worker. Everything around the forward (the
noise plan, the views, the log-softmax and the gather) still runs in the actor with the
algorithm's own code, so the estimator plan is the actor's by construction and the reference
log-probs are the colocated ones (bit for bit on CPU: same weights, same inputs, same kernels).
The cost: each reference forward ships its logits `[N, L, V]` back to the actor.

The actor syncs the reference (`ref_sync_every`): ref <- alpha * policy + (1 - alpha) * ref,
sent from each actor rank to its partner (`mix`).

DiDi-Instruct's teacher is the reference, and follows the same rule: its forwards (the
discriminator's surprise term) go through `RemoteReference`, its cached many-step samples are drawn
by the reference workers (`generate`, dare's sampler), and its discriminator is built in the actor
from the teacher's weights fetched once (`RemoteReference.local_copy`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import ray
import torch
from verl import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register

from dare.models.checkpoint import quiet_progress_bars
from dare.models.spec import DiffusionSpec
from dare.workers.builder import build_replica
from dare.workers.generation import RolloutBackends, generate_batch

PLACEMENTS = ("colocated", "separate")


def placement(resources: Any, role: str = "reference") -> str:
    """Where a frozen model of the stage lives: the one rule for the reference policy and the
    models built from it (DiDi's teacher is the reference; its discriminator is built from the
    teacher). `resources.reference`: "colocated" (in the actor) or "separate" (own workers)."""
    where = getattr(resources, "reference", "colocated")
    if where not in PLACEMENTS:
        raise ValueError(f"resources.reference must be one of {PLACEMENTS}, got {where!r} ({role})")
    return where


def _cpu(x: Any) -> Any:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


class RemoteReference(torch.nn.Module):
    """The actor-side stand-in for the reference model of one actor rank: `ref(ids, attention_mask=
    ..., position_ids=...)` returns an object with `.logits` (on the actor's device) computed by
    the partner `ReferenceWorker`. Holds no parameters. `template` returns a module of the
    reference's structure (the actor's policy), which `local_copy` fills with the reference's weights."""

    def __init__(
        self, handle: Any, device: str, spec: DiffusionSpec, template: Callable[[], torch.nn.Module] | None = None
    ) -> None:
        super().__init__()
        self.handle = handle
        self.device = device
        self.spec = spec
        self._template = template  # a callable, not a module attribute: no submodule registered

    def local_copy(self) -> torch.nn.Module:
        """A frozen module in the actor holding the reference's current weights, fetched once from
        the partner worker (what a model built from the reference copies, e.g. DiDi's discriminator)."""
        if self._template is None:
            raise ValueError("RemoteReference.local_copy: no template module (the actor passes its policy)")
        model = copy.deepcopy(self._template())
        model.load_state_dict(ray.get(self.handle.state.remote()))
        if hasattr(model, "disable_adapter"):  # LoRA: the reference is the base (as `reference_forward`'s)
            model.base_model.disable_adapter_layers()
        return model.to(self.device).eval().requires_grad_(False)

    def diffusion_spec(self) -> DiffusionSpec:
        return self.spec

    def forward(self, *args: Any, **kwargs: Any) -> SimpleNamespace:
        logits = ray.get(
            self.handle.reference_forward.remote(*[_cpu(a) for a in args], **{k: _cpu(v) for k, v in kwargs.items()})
        )
        return SimpleNamespace(logits=logits.to(self.device))


@ray.remote
class ReferenceWorker(Worker):
    def __init__(self, num_threads: int = 1, device: str = "cpu") -> None:
        super().__init__()
        torch.set_num_threads(num_threads)
        quiet_progress_bars()
        self.device = device
        self.model: torch.nn.Module | None = None
        self._version = 0  # weight loads so far: a rollout backend re-syncs when it lags
        self.rollout_backends = RolloutBackends(lambda: self.model, device)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self, model_spec: dict[str, Any], tokenizer_dir: str, seed: int, init_from: str | None) -> None:
        """The same module structure as the actor's (LoRA included), so its state dict loads as is;
        the weights come from the actor at each stage start (`set_weights`)."""
        model = build_replica(model_spec, tokenizer_dir, seed, init_from)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def generate(self, data: DataProto) -> DataProto:
        """Sample responses with the reference's weights, as the actor's `generate` does with the
        policy's (same backends, same per-rank row seeds): DiDi's cached teacher samples are drawn
        where the teacher lives. The model as loaded (a LoRA adapter stays on): the stage's starting
        policy, which is what the colocated actor samples them with."""
        return generate_batch(self.rollout_backends.get(data, self._version), data, self.rank)

    # the methods below are called by the partner actor rank directly (handle.method.remote)

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        """The stage's starting policy (the colocated frozen copy's weights)."""
        self.model.load_state_dict(state)
        self._version += 1

    def mix(self, policy: dict[str, torch.Tensor], alpha: float) -> None:
        """ref <- alpha * policy + (1 - alpha) * ref, parameter by parameter (as the colocated sync)."""
        with torch.no_grad():
            for name, ref in self.model.named_parameters():
                p = policy[name].to(ref.device)
                if alpha == 1.0:
                    ref.copy_(p)
                else:
                    ref.mul_(1.0 - alpha).add_(p, alpha=alpha)
        self._version += 1

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def checksum(self) -> float:
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    def reference_forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits of the reference (LoRA: the base, adapter disabled, like the colocated one)."""
        args = [a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args]
        kwargs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        adapter_off = getattr(self.model, "disable_adapter", None)
        with torch.no_grad():
            if adapter_off is not None:
                with adapter_off():
                    return self.model(*args, **kwargs).logits.cpu()
            return self.model(*args, **kwargs).logits.cpu()


__all__ = ["PLACEMENTS", "ReferenceWorker", "RemoteReference", "placement"]
