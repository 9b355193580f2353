"""`RolloutBackend`: what the RL trainer samples with, behind one interface.

A backend owns (or borrows) a copy of the policy and answers three things:

- `generate(prompts, sampling, seeds) -> Rollout`: responses with the per-token decode steps, tagged
  with `policy_version`, the version of the weights that sampled them. A request's randomness comes
  only from its own seed: prompt i's rows draw from generators seeded from `seeds[i]`, so the same
  prompt and seed give the same tokens whatever they are batched with (and on however many workers
  the batch is split).
- `update_weights(named_tensors, version)`: load new weights after a policy update.
- `release()` / `resume()`: free and retake device memory around training.

Backends are registered by name in `ROLLOUT_BACKENDS` (recipe key `stages[i].rollout_backend`):
"dare" is dare's own sampler (`DareSamplerBackend`, the exact reference, CPU or GPU); "sglang"
(`dare.sampling.sglang_backend`) serves block-diffusion families with SGLang.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from dare.registry import Registry
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import PromptsLike
from dare.sampling.rollout import Rollout

NamedTensors = Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]
ModelSource = torch.nn.Module | Callable[[], torch.nn.Module]

_MASK63 = (1 << 63) - 1


def row_seed(seed: int, generation: int) -> int:
    """The seed of generation `generation` of a prompt with seed `seed`: a splitmix64 mix, so
    neighbouring seeds and generations give unrelated streams. In [0, 2^63)."""
    z = (int(seed) + (generation + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63


class RowGenerators:
    """One `torch.Generator` per row. `dare.sampling.ops.uniform` recognises it (`row_uniform`) and
    draws row i's noise `shape[1:]` from generator i, so a row's noise never depends on the other
    rows of its batch. Every sampler draw goes through `ops.uniform` with rows first."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def start_block(self, block: int) -> None:
        """Restart every row's stream for block `block` (the block engine calls it). Within a block
        all rows start at step 0 together; a row whose block ended early in a batch (threshold
        decoding) would otherwise enter its next block with a stream advanced by the other rows' steps."""
        for g, s in zip(self.generators, self.seeds):
            g.manual_seed(row_seed(s, block))

    def __len__(self) -> int:
        return len(self.generators)

    def row_uniform(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if not shape or shape[0] != len(self.generators):
            raise ValueError(f"per-row noise of shape {shape}: the first dim must be the {len(self)} rows")
        u = [torch.rand(shape[1:], dtype=torch.float64, generator=g, device=self.device) for g in self.generators]
        return torch.stack(u).to(device)


class RolloutBackend(ABC):
    """A rollout engine behind the RL trainer (see the module docstring)."""

    name: ClassVar[str] = ""
    # does `generate` report the decoding trajectory (decode_step, confidence)? Objectives that replay
    # it (TraceRL, CJ-GRPO, MDPO: `decode_*` in their required batch keys) need one that does
    records_trajectory: ClassVar[bool] = True
    # does it honour `sampling.record_steps` (every step's state and x0-prediction, `StepRecorder`)?
    # Objectives that declare `Algorithm.records_steps` (MDPO) need one that does
    records_steps: ClassVar[bool] = True
    # can `continue_generate` resume partial responses for a range of schedule steps (the tree
    # rollouts of d-TreeRPO branch from intermediate states)?
    resumes_partial: ClassVar[bool] = False

    def __init__(self) -> None:
        self.policy_version = 0
        self.released = False

    @classmethod
    @abstractmethod
    def from_model(cls, model: ModelSource, device: str, **options: Any) -> RolloutBackend:
        """A backend serving `model` (a module, or a callable returning the current module when the
        weights are borrowed from a trainer that may rebuild it) on `device`."""

    @classmethod
    def check_stage(cls, sampling: SamplingConfig, required_batch_keys: Sequence[str], model_type: str | None) -> None:
        """At recipe load: can this backend serve a stage with this (resolved) rollout sampling, an
        objective reading `required_batch_keys`, and a model of `model_type` (None = unknown yet)?
        Raise ValueError saying what it cannot honour."""
        replayed = [k for k in required_batch_keys if k.startswith("decode_")]
        if replayed and not cls.records_trajectory:
            raise ValueError(
                f"does not report the decoding trajectory, which the objective reads ({', '.join(replayed)}); "
                "use rollout_backend: dare"
            )
        if sampling.record_steps and not cls.records_steps:
            raise ValueError(
                "does not record every denoising step (sampling.record_steps), which the objective trains on; "
                "use rollout_backend: dare"
            )

    @abstractmethod
    def generate(
        self, prompts: PromptsLike, sampling: SamplingConfig | Mapping[str, Any], seeds: Sequence[int]
    ) -> Rollout:
        """`sampling.num_generations` responses per prompt, prompt-major; `seeds[i]` is prompt i's seed."""

    def continue_generate(
        self,
        prompts: tuple[torch.Tensor, torch.Tensor],
        responses: torch.Tensor,
        sampling: SamplingConfig | Mapping[str, Any],
        seeds: Sequence[int],
        first_step: int,
        num_steps: int,
    ) -> torch.Tensor:
        """Continue `responses` `[N, L]` (partly [MASK]) for steps [first_step, first_step + num_steps)
        of the sampling schedule, one row per prompt, row i's noise from `seeds[i]` alone
        (`dare.sampling.generate.continue_generate`). Returns the new `[N, L]` responses."""
        raise ValueError(f"rollout backend {self.name!r} cannot continue partial responses; use rollout_backend: dare")

    @abstractmethod
    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """Load new policy weights; later rollouts carry `version`."""

    def sync_from(self, model: torch.nn.Module, version: int) -> None:
        """Catch up with `model` (the trainer's current policy) at `version`."""
        self.update_weights(model.state_dict(), version)

    def release(self) -> None:
        """Free device memory until `resume` (around a training step)."""
        self.released = True

    def resume(self) -> None:
        self.released = False

    def _check_live(self) -> None:
        if self.released:
            raise RuntimeError(f"rollout backend {self.name!r}: generate called between release() and resume()")


ROLLOUT_BACKENDS: Registry[type[RolloutBackend]] = Registry("rollout backend")


def as_sampling(sampling: SamplingConfig | Mapping[str, Any]) -> SamplingConfig:
    return sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**sampling)


def check_seeds(seeds: Sequence[int], num_prompts: int) -> list[int]:
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if len(seeds) != num_prompts:
        raise ValueError(f"seeds: got {len(seeds)} for {num_prompts} prompts (one seed per prompt)")
    return seeds


def _num_prompts(prompts: PromptsLike) -> int:
    return prompts[0].shape[0] if isinstance(prompts, tuple) else len(prompts)


def per_row_noise(config: SamplingConfig) -> bool:
    """Does the config's sampler draw every random number through `ops.uniform` (rows first), so that
    per-row generators make one batched call batch-invariant? A sampler that draws elsewhere declares
    `per_row_noise = False` (rgas: its discriminator) and is run one prompt at a time, each with a
    generator from its seed: exact, slower."""
    return bool(getattr(config.sampler_class(), "per_row_noise", True))


@ROLLOUT_BACKENDS.register("dare")
class DareSamplerBackend(RolloutBackend):
    """dare's own sampler (`dare.sampling.generate`): the exact reference backend."""

    name = "dare"
    resumes_partial = True

    def __init__(self, model: ModelSource, device: str = "cpu") -> None:
        super().__init__()
        self._model = model
        self.device = device

    @classmethod
    def from_model(cls, model: ModelSource, device: str, **options: Any) -> DareSamplerBackend:
        if options:
            raise ValueError(f"rollout backend 'dare' takes no options, got {sorted(options)}")
        return cls(model, device)

    @property
    def model(self) -> torch.nn.Module:
        return self._model if isinstance(self._model, torch.nn.Module) else self._model()

    def generate(
        self, prompts: PromptsLike, sampling: SamplingConfig | Mapping[str, Any], seeds: Sequence[int]
    ) -> Rollout:
        from dare.sampling.generate import generate

        self._check_live()
        config = as_sampling(sampling)
        seeds = check_seeds(seeds, _num_prompts(prompts))
        G = config.num_generations
        model = self.model
        model.eval()
        if per_row_noise(config):
            gens = RowGenerators([row_seed(s, g) for s in seeds for g in range(G)], self.device)
            rollout = generate(model, prompts, config, generator=gens)
        else:
            rollout = self._one_by_one(model, prompts, config, seeds)
        rollout.policy_version = self.policy_version
        return rollout

    def continue_generate(
        self,
        prompts: tuple[torch.Tensor, torch.Tensor],
        responses: torch.Tensor,
        sampling: SamplingConfig | Mapping[str, Any],
        seeds: Sequence[int],
        first_step: int,
        num_steps: int,
    ) -> torch.Tensor:
        from dare.sampling.generate import continue_generate

        self._check_live()
        seeds = check_seeds(seeds, responses.shape[0])
        model = self.model
        model.eval()
        gens = RowGenerators(seeds, self.device)
        return continue_generate(model, prompts, responses, as_sampling(sampling), gens, first_step, num_steps)

    def _one_by_one(self, model: torch.nn.Module, prompts: PromptsLike, config: SamplingConfig, seeds: list[int]):
        """Each prompt alone with its own generator, responses padded to one prompt width."""
        from dare.sampling.generate import generate

        if isinstance(prompts, tuple):
            prompts = [row[m.bool()].tolist() for row, m in zip(prompts[0].cpu(), prompts[1].cpu())]
        parts = [
            generate(model, [p], config, generator=torch.Generator(self.device).manual_seed(row_seed(s, 0)))
            for p, s in zip(prompts, seeds)
        ]
        return concat_rollouts(parts, model.diffusion_spec().pad_token_id)

    def sync_from(self, model: torch.nn.Module, version: int) -> None:
        if not isinstance(self._model, torch.nn.Module):  # borrowed: it already samples with `model`
            self.policy_version = int(version)
        else:
            super().sync_from(model, version)

    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        state = dict(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
        self.model.load_state_dict(state)
        self.policy_version = int(version)

    def release(self) -> None:
        # a borrowed model (the colocated actor's) is not ours to move
        if isinstance(self._model, torch.nn.Module) and self.device != "cpu":
            self._model.to("cpu")
            torch.cuda.empty_cache()
        super().release()

    def resume(self) -> None:
        if isinstance(self._model, torch.nn.Module) and self.device != "cpu":
            self._model.to(self.device)
        super().resume()


def concat_rollouts(parts: list[Rollout], pad_token_id: int) -> Rollout:
    """Rollouts of single prompts as one: prompts re-left-padded to the widest, prompt_index renumbered."""
    P = max(r.prompt_ids.shape[1] for r in parts)

    def left_pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (P - t.shape[1], 0), value=value)

    prompt_ids = torch.cat([left_pad(r.prompt_ids, pad_token_id) for r in parts])
    prompt_mask = torch.cat([left_pad(r.prompt_mask, False) for r in parts])
    response_ids = torch.cat([r.response_ids for r in parts])
    response_mask = torch.cat([r.response_mask for r in parts])
    keys = set.intersection(*(set(r.extras) for r in parts)) if parts[0].extras else set()
    return Rollout(
        sequences=torch.cat([prompt_ids, response_ids], 1),
        attention_mask=torch.cat([prompt_mask, response_mask], 1),
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        decode_step=torch.cat([r.decode_step for r in parts]),
        confidence=torch.cat([r.confidence for r in parts]),
        prompt_index=torch.cat([r.prompt_index + i for i, r in enumerate(parts)]),
        nfe=sum(r.nfe for r in parts),
        wall_time=sum(r.wall_time for r in parts),
        config=parts[0].config,
        extras={k: torch.cat([r.extras[k] for r in parts]) for k in sorted(keys)},
    )


def build_backend(name: str, model: ModelSource, device: str, **options: Any) -> RolloutBackend:
    """The registered backend `name` serving `model` on `device` (the optional ones register when
    `dare.sampling` is imported; their heavy dependencies import lazily, on use)."""
    return ROLLOUT_BACKENDS.get(name).from_model(model, device, **options)


__all__ = [
    "ROLLOUT_BACKENDS",
    "DareSamplerBackend",
    "RolloutBackend",
    "RowGenerators",
    "build_backend",
    "concat_rollouts",
    "per_row_noise",
    "row_seed",
]
