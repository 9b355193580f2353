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
from dare.models.spec import DiffusionSpec
from dare.sampling.base import SAMPLERS, WholeResponseSampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeState, process_logits
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


@SAMPLERS.register("rgas")
class RewardGuidedSampler(WholeResponseSampler):
    name = "rgas"
    attention = "full"
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
        g, disc, policy = model.guidance, model.discriminator, model.policy
        spec, P = state.spec, state.P
        x, valid = state.x, state.valid  # [N, P+L]: left-padded prompt, then L masks
        N, S, mask_id = x.shape[0], config.steps, spec.mask_token_id
        device = x.device
        response = torch.zeros_like(valid)
        response[:, P:] = True  # [N, P+L]: the positions the discriminator scores
        step_of, conf = state.decode_step, state.confidence  # [N, L]: -1 and NaN until decoded
        n_tilt = round(S * (1 - g.rerank_ratio))
        suppress = config.suppress_ids(spec)
        V = None
        for j in range(S):
            t, s = 1 - j / S, 1 - (j + 1) / S
            logits = process_logits(response_logits(policy, spec, x, valid, P), None, 0.0, spec, suppress)
            logp = logits.log_softmax(-1)  # [N, L, V] float64
            V = logp.shape[-1]
            masked = x[:, P:] == mask_id
            if j < n_tilt and s > 0:
                h = g.scale_start + (g.scale_end - g.scale_start) * (j / max(1, n_tilt - 1))
                with torch.enable_grad():
                    lp = logp.float().detach().requires_grad_(True)
                    soft = torch.where(
                        masked[..., None], lp.softmax(-1), nn.functional.one_hot(x[:, P:], V).float()
                    )  # [N, L, V]
                    prompt = nn.functional.one_hot(x[:, :P], V).float()
                    r = _reward(disc, x, valid, response, torch.full((N,), t, device=device), torch.cat([prompt, soft], 1),
                                generator)  # fmt: skip
                    (grad,) = torch.autograd.grad(r.sum(), lp)
                logp = logp + h * grad.double().clamp(-1, 1) * masked[..., None]
                new, reveal, tokens = _ancestral_step(x[:, P:], logp, t, s, config.temperature, mask_id, generator)
            else:
                M = g.num_candidates if s > 0 else 1
                cands = [
                    _ancestral_step(x[:, P:], logp, t, s, config.temperature, mask_id, generator) for _ in range(M)
                ]
                if M > 1:
                    scores = torch.stack(
                        [
                            _reward(
                                disc,
                                torch.cat([x[:, :P], c[0]], 1),
                                valid,
                                response,
                                torch.full((N,), s, device=device),
                                generator=generator,
                            )  # fmt: skip
                            for c in cands
                        ],
                        -1,
                    ).double()  # [N, M]  fmt: skip
                    pick = gumbel_argmax(scores, 1.0, generator)  # a draw from softmax(scores)
                else:
                    pick = torch.zeros(N, dtype=torch.long, device=device)
                new = torch.stack([c[0] for c in cands], 1)[torch.arange(N), pick]
                reveal = torch.stack([c[1] for c in cands], 1)[torch.arange(N), pick]
                tokens = torch.stack([c[2] for c in cands], 1)[torch.arange(N), pick]
            conf.copy_(torch.where(reveal, token_probability(logits, tokens), conf))
            step_of.copy_(torch.where(reveal, j, step_of))
            x[:, P:] = new
        return S, {}


__all__ = ["Guidance", "GuidedModel", "RewardGuidedSampler"]
