"""Few-step sampling with an exact trajectory: the sampler of a distilled (DiDi-Instruct) student.

The whole response is decoded in `steps` steps (`split_evenly(gen_length, steps)` tokens each,
remainder first). Each step runs one forward pass on the current state, draws a candidate for
every masked position from softmax(logits / T) (float64 Gumbel-max; argmax at T = 0) and commits
the k most confident ("low_confidence", LLaDA's rule) or k uniformly random ("random": the
ancestral sampler of a masked diffusion model, DiDi-Instruct's student sampler) positions.

Unlike the engine's samplers, no row stops early at EOS: every position is decoded by the model,
so the trajectory is exact — `Trajectory.step_of[i] = j` means token i was drawn at step j from
the state where every position with `step_of >= j` was masked, and `Trajectory.logp` is its
log-probability under the distribution it was drawn from. `trajectory_logp` recomputes those
log-probabilities with gradients (the student's log p_nu(x) = sum over steps of the per-step
transition log-probs, as in DiDi-Instruct, Zheng et al., arXiv 2509.25035).

Registered as the "few_step" sampler (`SamplingConfig(algorithm="few_step", steps=4)`).
Shapes: N rows, P padded prompt length, L = gen_length, V vocabulary, S = steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dare.models.spec import DiffusionSpec, aligned_logits
from dare.sampling.base import SAMPLERS, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeResult, PromptBatch, process_logits
from dare.sampling.ops import gumbel_argmax, split_evenly, token_probability, topk_transfer, uniform

REMASKING = ("low_confidence", "random")


@dataclass
class Trajectory:
    """A decoded response and how it was decoded."""

    response: torch.Tensor  # [N, L] long, every position decoded (no EOS cut)
    step_of: torch.Tensor  # [N, L] long, the step (0-based) that drew each token
    logp: torch.Tensor  # [N, L] float64, log-prob of each token under its step's (tempered) distribution
    confidence: torch.Tensor  # [N, L] float64, softmax(logits)[token] at temperature 1
    num_steps: int


def response_logits(
    model: torch.nn.Module, spec: DiffusionSpec, x: torch.Tensor, valid: torch.Tensor, P: int
) -> torch.Tensor:
    """Aligned logits of the response columns: x `[N, P+L]` -> `[N, L, V]`."""
    out = model(x, attention_mask=valid)
    return aligned_logits(out.logits, spec)[:, P:]


def tempered_log_probs(logits: torch.Tensor, spec: DiffusionSpec, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) with the mask token removed (T = 0 reads as T = 1: the greedy
    draw has no density; its log-probs are those of the model at temperature 1). `[..., V]`"""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    never = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    never[spec.mask_token_id] = True
    logits = logits.masked_fill(never, -math.inf)
    return (logits / (temperature if temperature > 0 else 1.0)).log_softmax(-1)


def sample_trajectory(
    model: torch.nn.Module,
    spec: DiffusionSpec,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    gen_length: int,
    steps: int,
    temperature: float = 1.0,
    remasking: str = "random",
    generator: torch.Generator | None = None,
    suppress_ids: tuple[int, ...] = (),
) -> Trajectory:
    """Decode `gen_length` tokens after left-padded prompts `[N, P]` in `steps` steps (no grad).

    Raises:
        ValueError: steps outside [1, gen_length] or an unknown remasking rule.
    """
    if not 1 <= steps <= gen_length:
        raise ValueError(f"steps={steps}: must be in [1, gen_length={gen_length}]")
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r}: choose from {list(REMASKING)}")
    N, P = input_ids.shape
    device = input_ids.device
    x = torch.cat([input_ids, torch.full((N, gen_length), spec.mask_token_id, device=device)], 1)  # [N, P+L]
    valid = torch.cat([attention_mask.bool(), torch.ones(N, gen_length, dtype=torch.bool, device=device)], 1)
    step_of = torch.full((N, gen_length), -1, dtype=torch.long, device=device)
    logp = torch.full((N, gen_length), math.nan, dtype=torch.float64, device=device)
    conf_out = torch.full((N, gen_length), math.nan, dtype=torch.float64, device=device)
    with torch.no_grad():
        for j, k in enumerate(split_evenly(gen_length, steps)):
            logits = process_logits(response_logits(model, spec, x, valid, P), None, 0.0, spec, suppress_ids)
            tokens = gumbel_argmax(logits, temperature, generator)  # [N, L]
            prob = token_probability(logits, tokens)  # [N, L] at temperature 1
            eligible = x[:, P:] == spec.mask_token_id
            conf = prob if remasking == "low_confidence" else uniform(tuple(tokens.shape), generator, device)
            transfer = topk_transfer(conf, eligible, torch.full((N,), k, device=device)) & eligible
            lp = tempered_log_probs(logits, spec, temperature).gather(-1, tokens[..., None])[..., 0]
            x[:, P:] = torch.where(transfer, tokens, x[:, P:])
            step_of = torch.where(transfer, j, step_of)
            logp = torch.where(transfer, lp, logp)
            conf_out = torch.where(transfer, prob, conf_out)
    return Trajectory(x[:, P:].clone(), step_of, logp, conf_out, steps)


def trajectory_states(response: torch.Tensor, step_of: torch.Tensor, num_steps: int, mask_id: int) -> torch.Tensor:
    """The state each step saw: state j masks every position with `step_of >= j`.
    `[N, L]` -> `[S, N, L]`."""
    j = torch.arange(num_steps, device=response.device)[:, None, None]
    return torch.where(step_of[None] >= j, mask_id, response[None])


def trajectory_logp(
    model: torch.nn.Module,
    spec: DiffusionSpec,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response: torch.Tensor,
    step_of: torch.Tensor,
    num_steps: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(tokens drawn at step j | state j) summed per step, with gradients: `[N, S]`.

    One batched forward over the S states of every row (`[S*N, P+L]`).
    """
    N, P = input_ids.shape
    L = response.shape[1]
    states = trajectory_states(response, step_of, num_steps, spec.mask_token_id)  # [S, N, L]
    x = torch.cat([input_ids.expand(num_steps, N, P), states], -1).reshape(num_steps * N, P + L)
    valid = torch.cat([attention_mask.bool(), torch.ones(N, L, dtype=torch.bool, device=x.device)], 1)
    logits = response_logits(model, spec, x, valid.repeat(num_steps, 1), P)  # [S*N, L, V]
    lp = tempered_log_probs(logits, spec, temperature)  # [S*N, L, V]
    tok = response.repeat(num_steps, 1)  # [S*N, L]
    lp = lp.gather(-1, tok[..., None])[..., 0].view(num_steps, N, L)
    drawn = step_of[None] == torch.arange(num_steps, device=x.device)[:, None, None]  # [S, N, L]
    return torch.where(drawn, lp, 0.0).sum(-1).transpose(0, 1)  # [N, S]


@SAMPLERS.register("few_step")
class FewStepSampler(Sampler):
    """Decodes the whole response in `steps` steps with an exact trajectory (module docstring)."""

    name = "few_step"
    attention = "full"
    remasking_choices = REMASKING
    options = frozenset({"remasking"})

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.block_length is not None and config.block_length != config.gen_length:
            raise ValueError(
                f"block_length={config.block_length}: few_step decodes the whole response as one block "
                f"(leave it unset or set it to gen_length={config.gen_length})"
            )
        if config.steps > config.gen_length:
            raise ValueError(f"steps={config.steps}: few_step takes at most gen_length={config.gen_length} steps")

    def run(
        self,
        model: torch.nn.Module,
        spec: DiffusionSpec,
        batch: PromptBatch,
        config: SamplingConfig,
        generator: torch.Generator | None,
    ) -> DecodeResult:
        suppress = config.end_token_ids(spec) if config.logits_eos_inf else ()
        traj = sample_trajectory(
            model, spec, batch.input_ids, batch.attention_mask, config.gen_length, config.steps,
            config.temperature, config.remasking, generator, suppress,
        )  # fmt: skip
        return DecodeResult(traj.response, traj.step_of, traj.confidence, config.steps, {"logp": traj.logp})


__all__ = [
    "REMASKING",
    "FewStepSampler",
    "Trajectory",
    "response_logits",
    "sample_trajectory",
    "tempered_log_probs",
    "trajectory_logp",
    "trajectory_states",
]
