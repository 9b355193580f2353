"""Reward-guided ancestral sampling (RGAS) with a DiDi-Instruct discriminator.

DiDi-Instruct (Zheng et al., arXiv 2509.25035; haoyangzheng-ai/didi-instruct
`reward_guided_ancestral_step`, `generate_samples`). The reward of a (partly masked) sequence is
r(z_t) = -log q_student(z_t) / q_teacher(z_t), i.e. minus the discriminator's per-position logits
summed over the response: higher = more teacher-like. Ancestral steps on a linear schedule
(alpha_t = 1 - t, t_j = 1 - j / steps): every masked position is revealed with probability
(t - s) / t (all at the last step), its token drawn from p_x0 (float64 Gumbel-max at the config's
temperature, argmax at 0); revealed tokens are carried over.

- First (1 - rerank_ratio) of the steps, **gradient tilting** (one candidate):
  log p_x0 += h * clip(grad_{log p_x0} r(z), -1, 1), where z feeds the discriminator the current
  state with masked positions replaced by their predicted distributions softmax(log p_x0); h ramps
  linearly from `scale_start` to `scale_end` (upstream 30 -> 40).
- Last rerank_ratio of the steps, **multi-candidate re-ranking** (h = 0): draw `num_candidates`
  next states, score each with the discriminator at its own noise level, and keep one drawn from
  softmax(scores).

Static step: the schedule is fixed (no done-check; `sync_every` is accepted and changes nothing)
and no step reads device values on the host. `compile: true` compiles the policy's forward (the
step's dominant cost). The discriminator work stays eager, outside the compiled code: the gradient
tilt calls `torch.autograd.grad` through the discriminator and the candidate scores draw the
discriminator's view split from the generator, neither of which torch.compile traces without
graph breaks (an attempt compiled >100 fragments for 4 steps).

The discriminator and the guidance settings ride on the model: pass
`GuidedModel(student, discriminator, Guidance(...))` to `generate` with
`SamplingConfig(algorithm="rgas", steps=...)`. The discriminator is any module called as
`disc(input_ids | None, attention_mask, t, token_probs=None, response_mask=...) -> [N, T]` per-position logits
(`dare.algorithms.didi_discriminator.DiffusionDiscriminator`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dare.diffusion.trajectory import response_logits
from dare.models.layers import full_attention_mask
from dare.models.spec import DiffusionSpec
from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, WholeResponseSampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeState, StepFunction, process_logits
from dare.sampling.ops import gumbel_argmax, token_probability, uniform


@dataclass(frozen=True)
class Guidance:
    # share of the steps (the last ones) that re-rank candidates; the rest tilt by gradient
    rerank_ratio: float = 0.5
    num_candidates: int = 4
    # tilting strength h, ramped linearly over the tilting steps
    scale_start: float = 30.0
    scale_end: float = 40.0

    def __post_init__(self) -> None:
        if not 0 <= self.rerank_ratio <= 1:
            raise ValueError(f"rerank_ratio={self.rerank_ratio}: must be in [0, 1]")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates={self.num_candidates}: must be >= 1")


class GuidedModel(nn.Module):
    """A policy plus the discriminator that guides it; forwards like the policy."""

    def __init__(self, policy: nn.Module, discriminator: nn.Module, guidance: Guidance | None = None) -> None:
        super().__init__()
        self.policy, self.discriminator = policy, discriminator
        self.guidance = guidance or Guidance()

    def diffusion_spec(self) -> DiffusionSpec:
        return self.policy.diffusion_spec()

    def get_input_embeddings(self) -> nn.Module:
        return self.policy.get_input_embeddings()

    def forward(self, *args, **kwargs):
        return self.policy(*args, **kwargs)


def _reward(disc, x, valid, response, t, token_probs=None, generator=None) -> torch.Tensor:
    """Minus the discriminator logits summed over the `response` positions: `[N]`."""
    logits = disc(
        None if token_probs is not None else x, valid, t, token_probs=token_probs, response_mask=response,
        generator=generator,
    )  # fmt: skip
    return -(logits * response).sum(-1)  # [N]


def _ancestral_step(x_resp, logp_x0, t, s, temperature, mask_id, generator):
    """Reveal each masked position with probability (t - s) / t, token ~ softmax(logp_x0 / T)."""
    tokens = gumbel_argmax(logp_x0, temperature, generator)  # [N, L]
    masked = x_resp == mask_id
    reveal = masked & (uniform(tuple(x_resp.shape), generator, x_resp.device) < (t - s) / t if s > 0 else masked)
    return torch.where(reveal, tokens, x_resp), reveal, tokens


class _RGASStep:
    """One RGAS step. `forward` (the policy's processed logits and log p_x0 `[N, L, V]` float64)
    is the compiled part; `__call__` adds the discriminator's guidance (eager) and returns
    (new response, revealed, tokens, p(token)), each `[N, L]`."""

    def __init__(self, model: GuidedModel, state: DecodeState, config: SamplingConfig, generator) -> None:
        self.disc, self.policy, self.guidance = model.discriminator, model.policy, model.guidance
        self.spec, self.P, self.valid = state.spec, state.P, state.valid
        # no padding: no mask; padding: the full mask and positions built once (no device read per step)
        self.policy_mask, self.policy_positions = (
            (None, None) if bool(state.valid.all()) else full_attention_mask(state.valid)
        )
        self.response = torch.zeros_like(state.valid)
        self.response[:, state.P :] = True  # [N, P+L]: the positions the discriminator scores
        self.temperature, self.generator = config.temperature, generator
        self.suppress = config.suppress_ids(state.spec)
        self.forward = StepFunction(self._policy_logits, state.x.device, compile=config.compile)

    def _policy_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        logits = process_logits(
            response_logits(self.policy, spec, x, self.policy_mask, self.P, self.policy_positions),
            None,
            0.0,
            spec,
            self.suppress,
        )
        return logits, logits.log_softmax(-1)

    def __call__(self, x: torch.Tensor, t: float, s: float, h: float | None):
        """h: the tilt strength of a gradient-tilting step, None for a re-ranking one."""
        P, N, mask_id = self.P, x.shape[0], self.spec.mask_token_id
        logits, logp = self.forward(x)
        masked = x[:, P:] == mask_id
        draw = (x[:, P:], logp, t, s, self.temperature, mask_id, self.generator)
        if h is not None:
            logp = logp + h * self._tilt(x, t, logp, masked).double().clamp(-1, 1) * masked[..., None]
            new, reveal, tokens = _ancestral_step(x[:, P:], logp, *draw[2:])
        else:
            M = self.guidance.num_candidates if s > 0 else 1
            cands = [_ancestral_step(*draw) for _ in range(M)]
            if M > 1:
                s_t = torch.full((N,), s, device=x.device)
                scores = torch.stack([self._score(x, c[0], s_t) for c in cands], -1).double()  # [N, M]
                pick = gumbel_argmax(scores, 1.0, self.generator)  # a draw from softmax(scores)
            else:
                pick = torch.zeros(N, dtype=torch.long, device=x.device)
            rows = torch.arange(N, device=x.device)
            new, reveal, tokens = (torch.stack([c[i] for c in cands], 1)[rows, pick] for i in range(3))
        return new, reveal, tokens, token_probability(logits, tokens)

    def _score(self, x: torch.Tensor, response: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
        """The reward of a candidate next state (the prompt of `x`, then `response`) at noise level s. `[N]`"""
        z = torch.cat([x[:, : self.P], response], 1)
        return _reward(self.disc, z, self.valid, self.response, s_t, generator=self.generator)

    def _tilt(self, x: torch.Tensor, t: float, logp: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """grad of the reward w.r.t. log p_x0, the discriminator fed the current state with masked
        positions replaced by their predicted distributions softmax(log p_x0)."""
        P, V, N = self.P, logp.shape[-1], x.shape[0]
        with torch.enable_grad():
            lp = logp.float().detach().requires_grad_(True)
            soft = torch.where(masked[..., None], lp.softmax(-1), nn.functional.one_hot(x[:, P:], V).float())
            probs = torch.cat([nn.functional.one_hot(x[:, :P], V).float(), soft], 1)  # [N, P+L, V]
            t_t = torch.full((N,), t, device=x.device)
            r = _reward(self.disc, x, self.valid, self.response, t_t, probs, self.generator)
            (grad,) = torch.autograd.grad(r.sum(), lp)
        return grad


@SAMPLERS.register("rgas")
class RewardGuidedSampler(WholeResponseSampler):
    name = "rgas"
    attention = "full"
    options = ENGINE_OPTIONS
    # the discriminator draws its noise outside `ops.uniform`: per-row generators do not reach it
    # (`dare.sampling.backend` then samples one prompt at a time)
    per_row_noise = False

    def decode(
        self, model: torch.nn.Module, state: DecodeState, config: SamplingConfig, generator: torch.Generator | None
    ) -> tuple[int, dict[str, torch.Tensor]]:
        if not isinstance(model, GuidedModel):
            raise ValueError(
                "algorithm='rgas' needs the discriminator: pass GuidedModel(policy, discriminator) as the model"
            )
        x, P, S = state.x, state.P, config.steps  # x [N, P+L]: left-padded prompt, then L masks
        g = model.guidance
        step = _RGASStep(model, state, config, generator)
        n_tilt = round(S * (1 - g.rerank_ratio))
        for j in range(S):  # a fixed schedule: no done-check
            t, s = 1 - j / S, 1 - (j + 1) / S
            h = (
                g.scale_start + (g.scale_end - g.scale_start) * (j / max(1, n_tilt - 1))
                if j < n_tilt and s > 0
                else None
            )
            new, reveal, tokens, prob = step(x, t, s, h)
            state.confidence.copy_(torch.where(reveal, prob, state.confidence))
            state.decode_step.copy_(torch.where(reveal, j, state.decode_step))
            x[:, P:] = new
        return S, {}


__all__ = ["Guidance", "GuidedModel", "RewardGuidedSampler"]
