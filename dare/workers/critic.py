"""The critic role: a value model with its own optimizer, for algorithms that declare one
(`Algorithm.critic_spec`, e.g. TraceRL's value model for token-wise baselines).

The value model is a copy of the policy's architecture (same family, same starting weights) whose
LM head is unused: a scalar head reads the last hidden state,

    V(x)_i = w . h_i(x) + b        `[B, L]`, w and b initialised to 0 (V starts at 0)

on the clean sequence (prompt + response), under the sequence's padding mask. The algorithm's
`critic_loss(values, batch)` says what V fits; the worker only runs it (one update per call:
AdamW, gradient clipping). It is one Ray worker (no data parallelism; the group has one rank)
and is rebuilt at each stage that needs it, from the stage's starting policy.

Its state (value model weights, AdamW moments, number of updates) is saved beside the actor's in
every `state/step_N` folder as `critic.safetensors` + `critic.json` (`dare.workers.state_io`: no
pickle) and restored on resume, so a resumed stage continues the same critic; the driver checks
the files (`check_critic_state`) before any worker reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from torch import nn
from verl import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register

from dare.algorithms import ALGORITHMS
from dare.algorithms.base import CriticSpec
from dare.models.checkpoint import load_policy, quiet_progress_bars
from dare.workers.builder import build_policy
from dare.workers.state_io import (
    StateFileError,
    check_optimizer_state,
    check_tree,
    has_tree,
    load_tree,
    refuse_pickles,
    save_tree,
)

# the critic's training-state files in `state/step_N`: critic.safetensors + critic.json
CRITIC_STATE = "critic"

CriticLossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class ValueModel(nn.Module):
    """A policy backbone plus a scalar value head on its last hidden state."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.get_input_embeddings().embedding_dim
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: no baseline until it learns one
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values `[B, L]` of every position of `input_ids` `[B, L]`."""
        out = self.backbone(input_ids, attention_mask=attention_mask.bool(), output_hidden_states=True)
        h = out.hidden_states[-1]  # [B, L, H]
        return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)  # [B, L, 1] -> [B, L]


class Critic:
    """A value model and its optimizer: `values(batch)` (no grad) and `update(batch, loss_fn)`."""

    def __init__(self, model: ValueModel, spec: CriticSpec) -> None:
        self.model, self.spec = model, spec
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.updates = 0  # update calls so far (one per RL step), saved with the state

    def values(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return self.model(batch["input_ids"], batch["attention_mask"])  # [B, L]

    def update(self, batch: dict[str, torch.Tensor], loss_fn: CriticLossFn) -> dict[str, float]:
        """One optimizer step on `loss_fn(values, batch)`; a non-finite loss or gradient is not applied."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        values = self.model(batch["input_ids"], batch["attention_mask"])  # [B, L]
        loss, metrics = loss_fn(values, batch)
        loss.backward()
        self.updates += 1
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            self.optimizer.step()
        return {**metrics, "critic/loss": float(loss.detach()), "critic/grad_norm": float(norm)}

    def save(self, directory: str | Path) -> None:
        """Write the critic's state to `directory/critic.{safetensors,json}`."""
        model = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        state = {"model": model, "optimizer": self.optimizer.state_dict(), "updates": self.updates}
        save_tree(state, directory, CRITIC_STATE)

    def load(self, directory: str | Path, updates: int | None = None) -> None:
        """Restore what `save` wrote; `updates`, when given, is the number of updates the state
        must hold (the step it is resumed at). Anything that does not fit this critic raises
        `StateFileError` naming `critic.json`, before the critic changes (checked first)."""
        where = Path(directory) / f"{CRITIC_STATE}.json"
        check_critic_state(directory)
        state = load_tree(directory, CRITIC_STATE)
        if not isinstance(state, dict) or set(state) != {"model", "optimizer", "updates"}:
            raise StateFileError(f"{where}: expected the keys 'model', 'optimizer' and 'updates'")
        saved = state["updates"]
        if not isinstance(saved, int) or isinstance(saved, bool) or saved < 0:
            raise StateFileError(f"{where}: 'updates' must be an integer >= 0, got {saved!r}")
        if updates is not None and saved != updates:
            raise StateFileError(f"{where}: holds a critic after {saved} updates; the stage resumes at step {updates}")
        _check_weights(self.model, state["model"], where)
        try:
            check_optimizer_state(self.optimizer, state["optimizer"])
        except ValueError as e:
            raise StateFileError(f"{where}: {e}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise StateFileError(f"{where}: its optimizer state does not fit this critic ({e})") from None
        self.model.load_state_dict(state["model"])
        self.updates = saved


def _check_weights(model: nn.Module, saved: Any, where: Path) -> None:
    """The saved weights have exactly the model's names, shapes and dtypes and are finite."""
    own = model.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(own):
        names = sorted(map(str, set(saved) ^ set(own))) if isinstance(saved, dict) else ["(not a dict)"]
        raise StateFileError(f"{where}: its value-model weights do not match this critic's ({names[:3]} ...)")
    for name, t in own.items():
        s = saved[name]
        if not isinstance(s, torch.Tensor) or s.shape != t.shape or s.dtype != t.dtype:
            got = f"{tuple(s.shape)} {s.dtype}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise StateFileError(f"{where}: weight {name!r} is {got}, this critic's is {tuple(t.shape)} {t.dtype}")
        if s.is_floating_point() and not bool(torch.isfinite(s).all()):
            raise StateFileError(f"{where}: weight {name!r} holds NaN/inf")


def check_critic_state(directory: str | Path) -> None:
    """Driver-side check of the critic's files in a `state/step_N` folder (present, no pickle,
    intact manifest and safetensors header), before any worker reads them. Raises
    `StateFileError` naming the file."""
    refuse_pickles(directory, CRITIC_STATE)
    manifest = Path(directory) / f"{CRITIC_STATE}.json"
    if not has_tree(directory, CRITIC_STATE):
        raise StateFileError(
            f"{manifest}: missing; this stage trains a critic and the training state in {directory} lacks its "
            f"state ({CRITIC_STATE}.safetensors + {CRITIC_STATE}.json), so a resumed stage could not continue it"
        )
    check_tree(directory, CRITIC_STATE)


@ray.remote
class CriticWorker(Worker):
    def __init__(self, num_threads: int = 1, device: str = "cpu") -> None:
        super().__init__()
        torch.set_num_threads(num_threads)
        quiet_progress_bars()
        self.device = device
        self.critic: Critic | None = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_stage(
        self,
        model_spec: dict[str, Any],
        tokenizer_dir: str,
        seed: int,
        init_from: str | None,
        algorithm: str,
        args: Any,
    ) -> None:
        """The value model from the stage's starting policy (LoRA merged: the critic trains all of
        its weights) and the optimizer of the algorithm's `critic_spec(args)`."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        policy = load_policy(init_from, merge=True) if init_from else build_policy(model_spec, tokenizer, seed)
        spec = policy.diffusion_spec()
        self.algorithm = ALGORITHMS.get(algorithm)(args, spec)
        critic_spec = type(self.algorithm).critic_spec(args)
        if critic_spec is None:
            raise ValueError(f"{algorithm}: declares no critic (critic_spec returned None)")
        self.critic = Critic(ValueModel(policy).to(self.device), critic_spec)

    def _tensors(self, data: DataProto) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in data.batch.items()}

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_values(self, data: DataProto) -> DataProto:
        """`values` `[B, L]` of the batch's sequences."""
        return DataProto.from_dict(tensors={"values": self.critic.values(self._tensors(data)).cpu()})

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def update_critic(self, data: DataProto) -> DataProto:
        """One update on the algorithm's `critic_loss`; metrics `critic/...`."""
        metrics = self.critic.update(self._tensors(data), self.algorithm.critic_loss)
        return DataProto(meta_info={"metrics": metrics})

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_state(self, path: str) -> None:
        """Write the critic's state into the training-state folder `path` (beside the actor's)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.critic.save(path)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_state(self, path: str, updates: int) -> None:
        """Restore the critic saved in `path` after `updates` updates (a resumed stage's step)."""
        self.critic.load(path, updates)


__all__ = ["CRITIC_STATE", "Critic", "CriticWorker", "ValueModel", "check_critic_state"]
