"""The sampler interface (`Sampler`, one registered class per algorithm) and the per-step
`Policy` an algorithm implements.

- `Sampler`: declares what it supports — attention kind, remasking strategies, caches, which
  `SamplingConfig` fields it reads — so the config is validated from data, never by branching on
  algorithm names (`SamplingConfig` reads these declarations through `SamplerDeclaration`, so
  the config does not depend on this module); `run` decodes a prompt batch into a `DecodeState`
  through `decode`, which by default is the block engine (`decode_blocks`) driving the
  algorithm's `Policy` on the algorithm's runner. A sampler with its own loop overrides `decode`.
- `Policy` (`dare.sampling.policy`, per decoding step): `plan`, `propose`, `select`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from dare.sampling.config import COMMON_FIELDS, SAMPLERS, SamplingConfig
from dare.sampling.engine import (
    DecodeResult,
    DecodeState,
    FullAttentionRunner,
    PromptBatch,
    Runner,
    StepRecorder,
    decode_blocks,
)
from dare.sampling.policy import Policy

if TYPE_CHECKING:
    from dare.models.spec import DiffusionSpec


# Options of every sampler decoded by the block engine (`decode_blocks`): how often the host
# syncs, and whether the step is compiled.
ENGINE_OPTIONS = frozenset({"sync_every", "compile"})
# `record_steps` (`StepRecorder`): declared by the block-engine samplers whose recording an objective
# can replay (LLaDA, Dream, SDAR); the others refuse it as an unused option
STEP_RECORDING = frozenset({"record_steps"})


class Sampler:
    """One generation algorithm. Subclasses set the class attributes and either implement `policy`
    (decoded by the block engine; `runner` picks the logits) or override `decode` (their own loop).

    Attributes:
        name: registry name (`SamplingConfig.algorithm`).
        attention: the `DiffusionSpec.attention` kind the algorithm decodes ("full" | "block").
        remasking_choices: accepted `remasking` values; the first is the default.
        cache_choices: accepted `cache` values; the first is the default.
        options: config fields this algorithm reads besides `COMMON_FIELDS`.
    """

    name: ClassVar[str]
    attention: ClassVar[str] = "full"
    remasking_choices: ClassVar[tuple[str, ...]] = ()
    cache_choices: ClassVar[tuple[str, ...]] = ("none",)
    options: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        """Algorithm-specific checks beyond the declared choices (raise ValueError naming the field)."""

    @classmethod
    def default_block_length(cls, config: SamplingConfig, spec: DiffusionSpec) -> int:
        """`block_length` when the config leaves it None: the whole response (pure diffusion)."""
        return config.gen_length

    def policy(self, config: SamplingConfig, generator: torch.Generator | None) -> Policy:
        """The per-step decisions of an engine-decoded algorithm (used by the default `decode`)."""
        raise NotImplementedError

    def runner(self, model: torch.nn.Module, state: DecodeState, config: SamplingConfig) -> Runner:
        """How the default `decode` computes block logits: full attention with the config's cache
        and classifier-free guidance."""
        return FullAttentionRunner(model, state.spec, state, config.cache, config.cfg_scale)

    def decode(
        self, model: torch.nn.Module, state: DecodeState, config: SamplingConfig, generator: torch.Generator | None
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """Decode `state`'s response in place; returns (forward passes, extras for the `Rollout`).

        The default is the block engine: semi-autoregressive blocks, each decoded by `self.policy`
        on `self.runner`'s logits, with guidance, `logits_eos_inf`, `confidence_eos_eot_inf` and
        per-row EOS stopping."""
        runner = self.runner(model, state, config)
        decode_blocks(
            state, runner, self.policy(config, generator), block_length=config.block_length, steps=config.steps,
            cfg_scale=config.cfg_scale, suppress_ids=config.suppress_ids(state.spec),
            confidence_end_inf=config.confidence_eos_eot_inf, sync_every=config.sync_every, compile=config.compile,
        )  # fmt: skip
        return runner.nfe, {}

    @classmethod
    def resumable(cls) -> bool:
        """Can it continue a partly decoded response for a range of its schedule's steps
        (`resume`)? Only the block engine's samplers can; one with its own loop cannot."""
        return cls.decode is Sampler.decode

    def resume(
        self,
        model: torch.nn.Module,
        state: DecodeState,
        config: SamplingConfig,
        generator: torch.Generator | None,
        step_range: tuple[int, int],
    ) -> int:
        """`decode`, but only the schedule's steps `step_range` on a `state` holding the response
        after the steps before them (see `decode_blocks`); returns the forward passes."""
        if not self.resumable():
            raise ValueError(f"sampler {self.name!r} has its own decoding loop and cannot resume a partial response")
        runner = self.runner(model, state, config)
        decode_blocks(
            state, runner, self.policy(config, generator), block_length=config.block_length, steps=config.steps,
            cfg_scale=config.cfg_scale, suppress_ids=config.suppress_ids(state.spec),
            confidence_end_inf=config.confidence_eos_eot_inf, sync_every=config.sync_every, compile=config.compile,
            step_range=step_range,
        )  # fmt: skip
        return runner.nfe

    def run(
        self,
        model: torch.nn.Module,
        spec: DiffusionSpec,
        batch: PromptBatch,
        config: SamplingConfig,
        generator: torch.Generator | None,
    ) -> DecodeResult:
        """Decode `config.gen_length` tokens after each left-padded prompt of `batch`."""
        state = DecodeState(batch, config.gen_length, spec, config.end_token_ids(spec))
        if config.record_steps:
            state.recorder = StepRecorder(config.steps)
        nfe, extras = self.decode(model, state, config, generator)
        if state.recorder is not None:
            extras = {**extras, **state.recorder.tensors(state)}
        return state.result(nfe, extras)


class WholeResponseSampler(Sampler):
    """A sampler that decodes the whole response as one block, one or more tokens per step, with
    its own loop (`decode`): few_step, rgas."""

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.block_length is not None and config.block_length != config.gen_length:
            raise ValueError(
                f"block_length={config.block_length}: {config.algorithm} decodes the whole response as one block "
                f"(leave it unset or set it to gen_length={config.gen_length})"
            )
        if config.steps > config.gen_length:
            raise ValueError(
                f"steps={config.steps}: {config.algorithm} takes at most gen_length={config.gen_length} steps"
            )


__all__ = ["COMMON_FIELDS", "ENGINE_OPTIONS", "SAMPLERS", "STEP_RECORDING", "Policy", "Sampler", "WholeResponseSampler"]
