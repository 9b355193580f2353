"""`SamplingConfig`: every generation setting, its default, and its validation.

The dataclass is the only place defaults live. A few fields default to None and are resolved
from the algorithm (declared on its registered `Sampler` class) when the config is built, or
from the model's `DiffusionSpec` in `for_model`; the resolved config is stored on the `Rollout`,
so what ran is always visible. Every check raises `ValueError` naming the field and its value,
before any model forward pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from dare.models.spec import DiffusionSpec
from dare.registry import Registry

# Fields every algorithm reads; anything else must appear in `Sampler.options` to be set.
COMMON_FIELDS = frozenset(
    {"algorithm", "gen_length", "steps", "block_length", "temperature", "num_generations",
     "extra_eos_token_ids", "logits_eos_inf"}
)  # fmt: skip


class SamplerDeclaration(Protocol):
    """What the config reads from a registered sampler class (`dare.sampling.base.Sampler`
    implements it): the config is validated from these declarations, and this module does not
    import the samplers."""

    name: ClassVar[str]
    attention: ClassVar[str]
    remasking_choices: ClassVar[tuple[str, ...]]
    cache_choices: ClassVar[tuple[str, ...]]
    options: ClassVar[frozenset[str]]

    @classmethod
    def check_config(cls, config: Any) -> None: ...

    @classmethod
    def default_block_length(cls, config: Any, spec: DiffusionSpec) -> int: ...


SAMPLERS: Registry[type[SamplerDeclaration]] = Registry("sampling algorithm")


@dataclass(frozen=True)
class SamplingConfig:
    """How to generate. Field names follow the upstream samplers (LLaDA `generate.py`, Dream
    `diffusion_generate`, SDAR `block_diffusion_generate`, Fast-dLLM).

    Which fields an algorithm reads is declared by its `Sampler` class (`COMMON_FIELDS` plus
    `options`); setting another field to a non-default value is an error rather than a silent
    no-op.
    """

    # Registered sampler name: "llada" (low-confidence remasking, semi-AR blocks), "dream"
    # (origin / maskgit_plus / topk_margin / entropy), "sdar" (block-causal decoding with a block
    # KV cache), "first_hitting" (exact one-token-per-event sampler).
    algorithm: str = "llada"
    # Number of response tokens to generate (the masked tail appended to each prompt).
    gen_length: int = 128
    # Total denoising steps for the whole response, split evenly over the blocks (remainder to
    # the earliest blocks). None = gen_length (one token per step, LLaDA's recommended setting).
    # SDAR's per-block `denoising_steps` is steps / num_blocks.
    steps: int | None = None
    # Semi-autoregressive block length; gen_length must be a multiple. None = gen_length for
    # full-attention algorithms (pure diffusion) and the model's block_size for block attention.
    block_length: int | None = None
    # Sampling temperature; 0 = greedy (argmax). Draws are Gumbel-max / categorical in float64.
    temperature: float = 0.0
    # Nucleus and top-k filtering before the draw (Dream, SDAR, first_hitting); 1.0 / 0 = off.
    top_p: float = 1.0
    top_k: int = 0
    # Order in which masks are revealed. None = the algorithm's default (first listed):
    # llada: low_confidence | random | rcr (MDPO's running-confidence remasking: decoded tokens of low
    # draw-time confidence go back to mask; cache none, no threshold / factor); dream: entropy | maskgit_plus | topk_margin | origin;
    # sdar: low_confidence_static | low_confidence_dynamic | sequential.
    remasking: str | None = None
    # Dream: > 0 draws the positions to unmask from softmax(confidence / alg_temp) instead of top-k.
    alg_temp: float = 0.0
    # Dream: the time grid is linspace(1, eps, steps_per_block + 1).
    eps: float = 1e-3
    # Classifier-free guidance: logits = un + (cfg_scale + 1) * (cond - un), where the
    # unconditional pass sees the prompt replaced by mask tokens. 0 = off.
    cfg_scale: float = 0.0
    # KV cache. None = the algorithm's default: "none" for llada/dream ("prefix" and "dual" are
    # Fast-dLLM's caches), "block" for sdar ("none" recomputes everything, for testing).
    cache: str | None = None
    # Fast-dLLM parallel decoding (llada, dream): unmask every masked token of the block whose
    # confidence >= threshold, always at least the most confident; `steps` then no longer caps
    # the loop. For sdar it is the low_confidence_dynamic threshold. In (0, 1].
    threshold: float | None = None
    # Factor rule (llada, dream): accept rank r while confidence_r >= 1 - factor / (r + 1).
    factor: float | None = None
    # Samples per prompt (rows prompt-major: prompt i owns rows i*G .. i*G+G-1).
    num_generations: int = 1
    # Ids that end a response besides the model's eos_token_ids (e.g. LLaDA-Instruct's
    # <|eot_id|> 126348). Tokens after the first end id become eos and leave the response mask.
    extra_eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # LLaDA `logits_eos_inf`: end ids (eos_token_ids + extra) can never be generated.
    logits_eos_inf: bool = False
    # LLaDA `confidence_eos_eot_inf`: end ids get confidence -inf, so they are unmasked last
    # (the intended effect; upstream's chained assignment only does it for one id at T > 0).
    confidence_eos_eot_inf: bool = False
    # Tokens per step of a fixed-count block (llada; `dare.sampling.ops.STEP_SCHEDULES`):
    # "linear" splits the block's masks evenly over its steps (LLaDA); "ascending" is CJ-GRPO's ASS
    # (step i unmasks 2^i tokens, the last step the rest: floor(log2(block_length)) steps a block).
    schedule: str = "linear"
    # CJ-GRPO's EOSER (llada): [gamma_min, gamma_max] with 0 < min <= max <= 1. The confidence of a
    # proposed eos token (the model's eos_token_ids) is multiplied by
    # gamma_min + (gamma_max - gamma_min) * progress, progress running over the block's steps as the
    # schedule defines it (linear: step / (steps - 1); ascending: (2^(step+1) - 1) / 2^steps), so
    # eos is committed late. The recorded probability is the model's, unscaled. None = off.
    eos_gamma: tuple[float, float] | None = None
    # LLaDA2.1 token editing (llada2): a decoded, non-prompt token of the current block is replaced
    # by a differing prediction whose probability exceeds this; None = off (LLaDA2.0 decoding).
    # LLaDA2.1's generate uses 0.9. In (0, 1].
    editing_threshold: float | None = None
    # LLaDA2.1 (llada2 with editing): editing passes allowed after the block has no mask left.
    max_post_steps: int = 16
    # Block-engine samplers (llada, dream, sdar): the host checks "every row done / no mask left
    # in the block" every `sync_every` denoising steps instead of every step (each check is a
    # device-to-host sync). Greedy tokens do not depend on it; a larger value can only add
    # forward passes that commit nothing (after the last mask or EOS, before the next check).
    sync_every: int = 1
    # Block-engine samplers: run each denoising step (forward + unmasking rule) through
    # `torch.compile` (on CUDA as CUDA graphs, one per batch / block / cache-length bucket).
    compile: bool = False
    # Record every denoising step's state, x0-prediction and confidences (`Rollout.extras`,
    # `dare.sampling.engine.StepRecorder`; [N, steps, gen_length] tensors, so only when an objective
    # asks: MDPO). Block-engine samplers that declare it (llada, dream), fixed step counts only.
    record_steps: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # frozen dataclass
        if self.algorithm not in SAMPLERS:
            raise ValueError(f"algorithm: {SAMPLERS.unknown_message(self.algorithm)}")
        sampler = SAMPLERS.get(self.algorithm)
        set_("extra_eos_token_ids", tuple(int(i) for i in self.extra_eos_token_ids))
        set_("eos_gamma", self._gamma_pair(self.eos_gamma))
        self._check_ranges()
        self._check_options(sampler)
        if self.remasking is None:
            set_("remasking", sampler.remasking_choices[0] if sampler.remasking_choices else None)
        elif self.remasking not in sampler.remasking_choices:
            raise ValueError(
                f"remasking={self.remasking!r} is not a strategy of algorithm {self.algorithm!r}; "
                f"choose from {list(sampler.remasking_choices)}"
            )
        if self.cache is None:
            set_("cache", sampler.cache_choices[0])
        elif self.cache not in sampler.cache_choices:
            raise ValueError(
                f"cache={self.cache!r} is not supported by algorithm {self.algorithm!r}; "
                f"choose from {list(sampler.cache_choices)}"
            )
        if self.steps is None:
            set_("steps", self.gen_length)
        if self.threshold is not None and self.factor is not None:
            raise ValueError(f"threshold={self.threshold} and factor={self.factor}: choose one parallel-decoding rule")
        if self.record_steps and self.parallel:
            raise ValueError(
                "record_steps: a parallel-decoding rule (threshold / factor) takes a data-dependent number of "
                "steps; recording every step needs the fixed count of `steps`"
            )
        sampler.check_config(self)
        if self.block_length is not None:
            self._check_blocks()

    # --- checks -----------------------------------------------------------------------------

    @staticmethod
    def _gamma_pair(value: Any) -> tuple[float, float] | None:
        """`eos_gamma` as a (min, max) float pair (YAML gives a list), checked."""
        if value is None:
            return None
        ok = isinstance(value, (list, tuple)) and len(value) == 2
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok or not 0 < value[0] <= value[1] <= 1:
            raise ValueError(
                f"eos_gamma={value!r}: must be a pair [gamma_min, gamma_max] with 0 < gamma_min <= gamma_max <= 1 "
                "(the factor on eos confidences rises from gamma_min at the first step to gamma_max)"
            )
        return float(value[0]), float(value[1])

    def _check_ranges(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be {rule}")

        need(isinstance(self.gen_length, int) and self.gen_length >= 1, "gen_length", "a positive integer")
        need(self.steps is None or (isinstance(self.steps, int) and self.steps >= 1), "steps", "a positive integer")
        need(
            self.block_length is None or (isinstance(self.block_length, int) and self.block_length >= 1),
            "block_length",
            "a positive integer",
        )
        need(self.temperature >= 0, "temperature", ">= 0")
        need(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        need(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)")
        need(self.alg_temp >= 0, "alg_temp", ">= 0")
        need(0 < self.eps < 1, "eps", "in (0, 1)")
        need(self.cfg_scale >= 0, "cfg_scale", ">= 0")
        need(self.threshold is None or 0 < self.threshold <= 1, "threshold", "in (0, 1]")
        need(self.factor is None or self.factor > 0, "factor", "> 0")
        need(isinstance(self.num_generations, int) and self.num_generations >= 1, "num_generations", ">= 1")
        need(isinstance(self.sync_every, int) and self.sync_every >= 1, "sync_every", "a positive integer")
        need(isinstance(self.compile, bool), "compile", "true or false")
        need(isinstance(self.record_steps, bool), "record_steps", "true or false")

    def _check_options(self, sampler: type[SamplerDeclaration]) -> None:
        allowed = COMMON_FIELDS | sampler.options
        # values the algorithm resolves None to are as good as None (a resolved config re-validates)
        resolved = {
            "remasking": sampler.remasking_choices[0] if sampler.remasking_choices else None,
            "cache": sampler.cache_choices[0],
        }
        for f in dataclasses.fields(self):
            if f.name in allowed:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(self, f.name)
            if value != default and not (f.name in resolved and value == resolved[f.name]):
                raise ValueError(
                    f"{f.name}={getattr(self, f.name)!r} is not used by algorithm {self.algorithm!r} "
                    f"(it reads: {', '.join(sorted(allowed - {'algorithm'}))})"
                )

    def _check_blocks(self) -> None:
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} is not divisible by block_length={self.block_length}")
        num_blocks = self.gen_length // self.block_length
        if self.steps < num_blocks:
            raise ValueError(
                f"steps={self.steps} is less than the number of blocks "
                f"(gen_length / block_length = {self.gen_length} / {self.block_length} = {num_blocks}); "
                "every block needs at least one step"
            )

    # --- derived values ---------------------------------------------------------------------

    @property
    def sampler_class(self) -> type[SamplerDeclaration]:
        return SAMPLERS.get(self.algorithm)

    @property
    def num_blocks(self) -> int:
        if self.block_length is None:
            raise ValueError("block_length is unresolved; call for_model(spec) first")
        return self.gen_length // self.block_length

    @property
    def parallel(self) -> bool:
        """True when a Fast-dLLM parallel rule (threshold or factor) decides the counts."""
        return self.threshold is not None or self.factor is not None

    def for_model(self, spec: DiffusionSpec) -> SamplingConfig:
        """The config resolved and checked against a model's spec (before any compute)."""
        sampler = self.sampler_class
        if spec.attention != sampler.attention:
            raise ValueError(
                f"algorithm={self.algorithm!r} decodes {sampler.attention}-attention models, but the model's "
                f"DiffusionSpec.attention is {spec.attention!r}"
            )
        block_length = self.block_length
        if block_length is None:
            block_length = sampler.default_block_length(self, spec)
        if spec.attention == "block":
            if block_length % spec.block_size:
                raise ValueError(
                    f"block_length={block_length} must be a multiple of the model's block_size={spec.block_size}: "
                    "a committed block must never attend to a later one"
                )
            if spec.shift_logits:
                raise ValueError("DiffusionSpec.shift_logits=True is not supported with block attention")
        resolved = dataclasses.replace(self, block_length=block_length)
        return resolved

    def end_token_ids(self, spec: DiffusionSpec) -> tuple[int, ...]:
        """Ids that end a response: the model's eos_token_ids plus `extra_eos_token_ids`."""
        return tuple(dict.fromkeys(spec.eos_token_ids + self.extra_eos_token_ids))

    def suppress_ids(self, spec: DiffusionSpec) -> tuple[int, ...]:
        """Ids whose logits are set to -inf before sampling: the end ids under `logits_eos_inf`."""
        return self.end_token_ids(spec) if self.logits_eos_inf else ()


__all__ = ["COMMON_FIELDS", "SAMPLERS", "SamplerDeclaration", "SamplingConfig"]
