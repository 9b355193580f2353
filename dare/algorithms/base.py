"""The algorithm interface and registry.

An algorithm is one class, registered by name, that declares its stage `kind`, the attention
kinds it supports, the batch tensors it reads and its `Args` dataclass (the recipe keys it accepts), and
computes its loss from a batch. Trainers and workers never branch on algorithm names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dare.models.spec import DiffusionSpec
from dare.registry import Registry


@dataclass(frozen=True)
class CriticSpec:
    """The critic (value model) an algorithm asks for: a copy of the policy's architecture whose LM
    head is replaced by a scalar value head on the last hidden state (`dare.workers.critic`),
    trained by its own AdamW optimizer on the algorithm's `critic_loss`."""

    lr: float
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError(f"critic: need lr > 0, weight_decay >= 0, grad_clip > 0, got {self}")


# continue_fn(input_ids [n, P], attention_mask [n, P], responses [n, L], seeds [n], first_step, num_steps)
# -> [n, L]: the rollout backend continuing partial responses for steps of the sampling schedule
ContinueFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]
# score_fn(prompt_index [n], responses [n, L], response_mask [n, L]) -> (rewards [n], reward metrics)
ScoreFn = Callable[[list[int], torch.Tensor, torch.Tensor], tuple[list[float], dict[str, float]]]


@dataclass
class ShapedBatch:
    """What a `RolloutShape` hands the RL trainer: the actor's batch (advantages included, one row
    per training sequence), the rewards of the completions it scored (for metrics) and metrics."""

    batch: dict[str, torch.Tensor]
    scores: torch.Tensor
    metrics: dict[str, float]
    reward_metrics: dict[str, float]


class RolloutShape:
    """A rollout other than the RL trainer's default of `num_generations` independent responses
    per prompt (d-TreeRPO's tree). The trainer hands it the step's prompts and seeds, a function
    that continues partial responses through the stage's rollout backend and one that scores
    finished responses; it returns the actor's batch. Declared by `Algorithm.rollout_shape`."""

    def collect(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        seeds: torch.Tensor,
        continue_fn: ContinueFn,
        score_fn: ScoreFn,
    ) -> ShapedBatch:
        """prompt_ids / prompt_mask `[B, P]` (left-padded), seeds `[B]` one per prompt."""
        raise NotImplementedError


class Algorithm:
    """Base class. Subclasses set the class attributes and implement `compute_loss`."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "sft" | "rl" | "preference" | "distill"
    attention: ClassVar[tuple[str, ...]] = ("full", "block")
    # the stage trainer (`dare.trainer.STAGE_TRAINERS` name) that drives it; None = its kind's.
    # An algorithm with its own loop (DRAKES backpropagates through sampling) names its own.
    trainer: ClassVar[str | None] = None
    # whether it runs on an FSDP2-sharded actor (resources.strategy); an algorithm that reads
    # parameters outside the model's forward (e.g. the embedding matrix) cannot
    supports_sharding: ClassVar[bool] = True
    # whether its reference may live in separate workers (resources.reference: separate), i.e. it
    # only runs the reference's forward without gradient (or, like DiDi-Instruct, builds its modules
    # from the weights `RemoteReference.local_copy` fetches); one that backpropagates through it cannot
    separate_reference: ClassVar[bool] = True
    # tensors its `prepare` / `compute_loss` read; the actor checks a batch has them before a step
    required_batch_keys: ClassVar[tuple[str, ...]] = ()
    # whether `loss_backward` runs and backpropagates its estimator's views (Monte-Carlo samples)
    # one at a time: one view's activations are alive whatever their number (the memory plan's count)
    backward_per_sample: ClassVar[bool] = False
    # RL: whether its rollouts record every denoising step (`sampling.record_steps`: the batch gets
    # `step_state`, `step_prediction`, `step_confidence` `[B, S, L]`) and the RL trainer scores every
    # step's x0-prediction text with the stage's rewards (`step_rewards` `[B, S]`) before `group_tensors`
    records_steps: ClassVar[bool] = False

    @dataclass
    class Args:
        pass

    def __init__(self, args: Any, spec: DiffusionSpec) -> None:
        self.args = args
        self.spec = spec

    def check_batch(self, batch: dict[str, Any]) -> None:
        """Raise a KeyError naming the algorithm and the tensors a batch lacks."""
        missing = [k for k in self.required_batch_keys if k not in batch]
        if missing:
            raise KeyError(f"{self.name}: the batch lacks {missing} (it has {sorted(batch)})")

    @classmethod
    def check_fit(cls, args: Any, spec: DiffusionSpec, gen_length: int) -> None:
        """Raise ValueError when `args` do not fit a model with `spec` generating `gen_length`
        tokens (e.g. blocks that do not divide the length). Called when the recipe loads, so a
        misfit fails before any stage trains; the default has nothing to check."""

    @classmethod
    def trainer_name(cls) -> str:
        return cls.trainer or cls.kind

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per trainer step (RL: mu inner iterations)."""
        return 1

    @property
    def needs_reference(self) -> bool:
        return False

    @property
    def reference_sync(self) -> tuple[int, float]:
        """(N, alpha): after every N-th optimizer update of the stage the actor moves its frozen
        reference toward the policy, ref = alpha * policy + (1 - alpha) * ref; N = 0: never."""
        return 0, 1.0

    @classmethod
    def critic_spec(cls, args: Any) -> CriticSpec | None:
        """The critic this algorithm trains next to the policy (lr etc. from its `args`), None = no
        critic (the default: no critic worker is built and nothing changes). With a critic the RL
        trainer puts the critic's `values` `[B, L]` and the rows' `scores` `[B]` in the batch before
        `update_actor`, then calls the critic's `update_critic` on the same batch."""
        return None

    def critic_loss(
        self, values: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The critic's loss from its `values` `[B, L]` (with grad) and the batch; metrics `critic/...`.
        Needed only when `critic_spec` returns a spec."""
        raise NotImplementedError(f"{self.name}: declares a critic but no critic_loss")

    @classmethod
    def group_tensors(
        cls, args: Any, batch: dict[str, torch.Tensor], uid: Any
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """RL, on the driver, after the group advantages: tensors computed from the whole batch (they
        need every row of a group, which data-parallel workers do not see together), added to the batch
        before `update_actor`, and metrics. `uid` `[B]`: each row's group. The default adds nothing."""
        return {}, {}

    @classmethod
    def rollout_shape(cls, args: Any, spec: DiffusionSpec, gen_length: int) -> RolloutShape | None:
        """How the RL trainer rolls out for this algorithm: None (the default) = `num_generations`
        independent responses per prompt, scored and turned into group advantages by the trainer;
        a `RolloutShape` = the shape builds the batch itself (d-TreeRPO's tree)."""
        return None

    @classmethod
    def check_recipe(cls, recipe: Any, stage: Any, key: str, file: Any) -> None:
        """Checks of the stage's arguments against the rest of the recipe (model, resources),
        at recipe load; raise `RecipeError` naming `key`."""

    def prepare(
        self, model: torch.nn.Module, reference, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """The batches of the step's optimizer updates (one per update), with whatever must be
        computed before the first update (old-policy and reference log-probs). `reference()` is
        a context manager yielding the reference model (None when not needed)."""
        return [batch]

    def replayed_updates(
        self,
        model: torch.nn.Module,
        reference,
        batch: dict[str, torch.Tensor],
        log_prob: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    ) -> list[dict[str, torch.Tensor]]:
        """A `prepare` for `args.mu` updates on the same batch: `old_log_prob` (mu > 1) and
        `ref_log_prob` (when `needs_reference`) computed first by `log_prob(model, batch)`, no grad."""
        it = dict(batch)
        with torch.no_grad():
            if self.args.mu > 1:
                it["old_log_prob"] = log_prob(model, batch)
            if self.needs_reference:
                with reference() as ref:
                    it["ref_log_prob"] = log_prob(ref, batch)
        return [it] * self.args.mu

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def loss_backward(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], backward: Backward
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """What the actor calls to train on a micro-batch: compute the loss and hand it to
        `backward(part, share)`, which backpropagates `part` at once; returns (the loss, detached;
        metrics). The default hands over `compute_loss`'s loss whole (`share` 1). An objective
        that is a sum of terms with their own forwards (BGPO's Monte-Carlo samples) may hand over
        each term as soon as it is computed, its `share` the fraction of the objective it is
        (the actor weighs that term's forwards' MoE router losses by it): one term's graph is
        alive at a time, so activation memory does not grow with the number of terms. The parts
        must sum to `compute_loss`'s loss; `backward` may be called only with tensors of this call."""
        loss, metrics = self.compute_loss(model, batch)
        backward(loss, 1.0)
        return loss.detach(), metrics


# backward(part, share): backpropagate `part` of the loss now; `share` is its fraction of the objective
Backward = Callable[[torch.Tensor, float], None]


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: register under `cls.name`."""
    ALGORITHMS.register(cls.name, cls)
    return cls


def row_generators(seeds: torch.Tensor) -> list[torch.Generator]:
    """One generator per batch row from the row's seed `[B]`.

    The driver draws every row's noise seed, so a row's noise does not depend on how the batch
    is split across data-parallel workers or micro-batches (2 workers == 1 worker, bit for bit),
    and a resumed run replays the same noise.
    """
    return [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Backward",
    "ContinueFn",
    "CriticSpec",
    "RolloutShape",
    "ScoreFn",
    "ShapedBatch",
    "register_algorithm",
    "row_generators",
]
