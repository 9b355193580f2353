"""The sampler interface (`Sampler`, one registered class per algorithm) and the per-step
`Policy` an algorithm implements.

- `Sampler`: declares what it supports — attention kind, remasking strategies, caches, which
  `SamplingConfig` fields it reads — so the config is validated from data, never by branching on
  algorithm names (`SamplingConfig` reads these declarations through `SamplerDeclaration`, so
  the config does not depend on this module); `run` decodes a prompt batch.
- `Policy` (`dare.sampling.policy`, per decoding step): `plan`, `propose`, `select`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from dare.sampling.config import COMMON_FIELDS, SAMPLERS, SamplingConfig
from dare.sampling.policy import Policy

if TYPE_CHECKING:
    from dare.models.spec import DiffusionSpec
    from dare.sampling.engine import DecodeResult, PromptBatch


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


__all__ = ["COMMON_FIELDS", "SAMPLERS", "Policy", "Sampler"]
