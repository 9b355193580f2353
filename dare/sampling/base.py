"""The sampler registry and the two interfaces an algorithm implements.

- `Sampler` (one registered class per algorithm): declares what it supports — attention kind,
  remasking strategies, caches, which `SamplingConfig` fields it reads — so the config is
  validated from data, never by branching on algorithm names; `run` decodes a prompt batch.
- `Policy` (per decoding step): `plan` says how many tokens each row unmasks (or None when the
  rule is not count-based), `propose` draws candidate tokens and a confidence per position, and
  `select` picks the positions to commit. The block engine (`dare.sampling.engine`) owns the
  loop, caches, trajectory and EOS stopping, and calls these three.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from dare.registry import Registry

if TYPE_CHECKING:
    from dare.models.spec import DiffusionSpec
    from dare.sampling.config import SamplingConfig
    from dare.sampling.engine import DecodeResult, PromptBatch

# Fields every algorithm reads; anything else must appear in `Sampler.options` to be set.
COMMON_FIELDS = frozenset(
    {"algorithm", "gen_length", "steps", "block_length", "temperature", "num_generations",
     "extra_eos_token_ids", "logits_eos_inf"}
)  # fmt: skip


class Sampler:
    """One generation algorithm. Subclasses set the class attributes and implement `run`.

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

    def run(
        self,
        model: torch.nn.Module,
        spec: DiffusionSpec,
        batch: PromptBatch,
        config: SamplingConfig,
        generator: torch.Generator | None,
    ) -> DecodeResult:
        raise NotImplementedError


class Policy:
    """Per-step decisions of a masked-diffusion algorithm (see module docstring).

    Shapes: N rows, L positions of the current block, V vocabulary.
    """

    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        """Tokens to unmask per row `[N]` at `step` of a block with `num_steps` steps, given the
        masks `remaining` per row `[N]`; None when the count is not fixed in advance. The engine
        skips the forward pass of a step that plans zero tokens for every row."""
        return None

    def propose(self, logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate tokens `[N, L]` and their confidence `[N, L]` (float64; higher = unmask
        first) from processed float64 logits `[N, L, V]`."""
        raise NotImplementedError

    def select(
        self,
        conf: torch.Tensor,
        eligible: torch.Tensor,
        k: torch.Tensor | None,
        step: int,
        num_steps: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Positions to commit, bool `[N, L]` (the engine ANDs it with `eligible`). `k` is the
        output of `plan` for this step."""
        raise NotImplementedError


SAMPLERS: Registry[type[Sampler]] = Registry("sampling algorithm")

__all__ = ["COMMON_FIELDS", "SAMPLERS", "Policy", "Sampler"]
