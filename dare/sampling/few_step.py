"""Few-step sampling with an exact trajectory: the sampler of a distilled (DiDi-Instruct) student.

The whole response is decoded in `steps` steps (`split_evenly(gen_length, steps)` tokens each,
remainder first). Each step runs one forward pass on the current state, draws a candidate for
every masked position from softmax(logits / T) (float64 Gumbel-max; argmax at T = 0) and commits
the k most confident ("low_confidence", LLaDA's rule) or k uniformly random ("random": the
ancestral sampler of a masked diffusion model, DiDi-Instruct's student sampler) positions.

Unlike the engine's samplers, no row stops early at EOS: every position is decoded by the model,
so the trajectory is exact — `Trajectory.step_of[i] = j` means token i was drawn at step j from
the state where every position with `step_of >= j` was masked, and `Trajectory.logp` is its
log-probability under the distribution it was drawn from. `dare.diffusion.trajectory.trajectory_token_logp` recomputes those
log-probabilities with gradients (the student's log p_nu(x) = sum over steps of the per-step
transition log-probs, as in DiDi-Instruct, Zheng et al., arXiv 2509.25035).

The step (forward, draw, selection) has fixed shapes and no host synchronisation and can be
compiled (`compile: true`); the schedule is fixed, so there is no done-check at all (`sync_every`
is accepted and changes nothing).

Registered as the "few_step" sampler (`SamplingConfig(algorithm="few_step", steps=4)`).
Shapes: N rows, P padded prompt length, L = gen_length, V vocabulary, S = steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dare.diffusion.trajectory import response_logits, tempered_log_probs
from dare.models.layers import full_attention_mask
from dare.models.spec import DiffusionSpec
from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, WholeResponseSampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeState, StepFunction, process_logits
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


@dataclass
class _TrajectoryStep:
    """One step of `sample_trajectory` as a function of tensors: (x `[N, P+L]`, the mask and positions
    `response_logits` takes, k `[N]`) -> (tokens, transfer, logp, prob), each `[N, L]`."""

    model: torch.nn.Module
    spec: DiffusionSpec
    P: int
    temperature: float
    remasking: str
    generator: torch.Generator | None
    suppress_ids: tuple[int, ...]

    def __call__(
        self, x: torch.Tensor, valid: torch.Tensor | None, positions: torch.Tensor | None, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        spec, P, T = self.spec, self.P, self.temperature
        logits = response_logits(self.model, spec, x, valid, P, positions)
        logits = process_logits(logits, None, 0.0, spec, self.suppress_ids)
        tokens = gumbel_argmax(logits, T, self.generator)  # [N, L]
        prob = token_probability(logits, tokens)  # [N, L] at temperature 1
        eligible = x[:, P:] == spec.mask_token_id
        conf = prob if self.remasking == "low_confidence" else uniform(tuple(tokens.shape), self.generator, x.device)
        transfer = topk_transfer(conf, eligible, k) & eligible
        lp = tempered_log_probs(logits, spec, T).gather(-1, tokens[..., None])[..., 0]
        return tokens, transfer, lp, prob


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
    compile: bool = False,
) -> Trajectory:
    """Decode `gen_length` tokens after left-padded prompts `[N, P]` in `steps` steps (no grad);
    `compile` runs each step through `torch.compile` (the same tokens).

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
    # no padding: no mask; padding: the full mask and positions built once (no device read in the loop)
    mask, positions = (None, None) if bool(valid.all()) else full_attention_mask(valid)
    step_of = torch.full((N, gen_length), -1, dtype=torch.long, device=device)
    logp = torch.full((N, gen_length), math.nan, dtype=torch.float64, device=device)
    conf_out = torch.full((N, gen_length), math.nan, dtype=torch.float64, device=device)
    step = StepFunction(
        _TrajectoryStep(model, spec, P, temperature, remasking, generator, suppress_ids), device, compile=compile
    )
    with torch.no_grad():
        for j, k in enumerate(split_evenly(gen_length, steps)):  # a fixed schedule: no done-check
            tokens, transfer, lp, prob = step(x, mask, positions, torch.full((N,), k, device=device))
            x[:, P:] = torch.where(transfer, tokens, x[:, P:])
            step_of = torch.where(transfer, j, step_of)
            logp = torch.where(transfer, lp, logp)
            conf_out = torch.where(transfer, prob, conf_out)
    return Trajectory(x[:, P:].clone(), step_of, logp, conf_out, steps)


@SAMPLERS.register("few_step")
class FewStepSampler(WholeResponseSampler):
    """Decodes the whole response in `steps` steps with an exact trajectory (module docstring)."""

    name = "few_step"
    attention = "full"
    remasking_choices = REMASKING
    options = frozenset({"remasking"}) | ENGINE_OPTIONS

    def decode(
        self, model: torch.nn.Module, state: DecodeState, config: SamplingConfig, generator: torch.Generator | None
    ) -> tuple[int, dict[str, torch.Tensor]]:
        spec, P = state.spec, state.P
        traj = sample_trajectory(
            model, spec, state.x[:, :P], state.valid[:, :P], config.gen_length, config.steps, config.temperature,
            config.remasking, generator, config.suppress_ids(spec), compile=config.compile,
        )  # fmt: skip
        state.response.copy_(traj.response)
        state.decode_step.copy_(traj.step_of)
        state.confidence.copy_(traj.confidence)
        return config.steps, {"logp": traj.logp}


__all__ = ["REMASKING", "FewStepSampler", "Trajectory", "sample_trajectory"]
