"""First-hitting sampler (Zheng et al., "Masked Diffusion Models are Secretly Time-Agnostic Masked
Models and Exploit Inaccurate Categorical Sampling", arXiv 2409.02908; bd3lms `_semi_ar_sampler`).

The reverse process of a masked diffusion model unmasks tokens one at a time. With n masked
tokens at time t (linear schedule) the next unmasking happens at tau = t * u^(1/n), u ~ U(0, 1),
and unmasks one uniformly chosen masked position, sampled from p_theta(. | x_t). This is exact:
unlike a fixed-step sampler it never draws two tokens independently in one step. The models here
are time-agnostic, so the times do not change the tokens; they are returned in
`Rollout.extras["hitting_time"]` (per block, each block's clock starting at 1).

One forward pass per token; only the chosen position's logits are turned into a distribution.
"""

from __future__ import annotations

import math

import torch

from dare.sampling.base import SAMPLERS, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeState, FullAttentionRunner, process_logits
from dare.sampling.ops import sample_tokens, token_probability, uniform


@SAMPLERS.register("first_hitting")
class FirstHittingSampler(Sampler):
    name = "first_hitting"
    attention = "full"
    options = frozenset({"top_p", "top_k"})

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.steps != config.gen_length:
            raise ValueError(
                f"steps={config.steps}: first_hitting unmasks exactly one token per step, so steps must equal "
                f"gen_length={config.gen_length} (leave steps unset)"
            )

    def decode(
        self, model: torch.nn.Module, state: DecodeState, config: SamplingConfig, generator: torch.Generator | None
    ) -> tuple[int, dict[str, torch.Tensor]]:
        spec = state.spec
        runner = FullAttentionRunner(model, spec, state, cache="none", cfg_scale=0.0)
        suppress = config.suppress_ids(spec)
        N, Lb = state.x.shape[0], config.block_length
        device = state.x.device
        times = torch.full((N, config.gen_length), math.nan, dtype=torch.float64, device=device)
        rows = torch.arange(N, device=device)
        for b in range(config.num_blocks):
            start = state.P + b * Lb
            end = start + Lb
            clock = torch.ones(N, dtype=torch.float64, device=device)  # each block's time runs 1 -> 0
            while True:
                eligible = state.eligible(start, end)  # [N, Lb]
                active = eligible.any(-1)
                if not bool(active.any()):
                    break
                n_masked = eligible.sum(-1).clamp(min=1).double()
                u_time, u_pos = uniform((N,), generator, device), uniform((N, Lb), generator, device)
                clock = torch.where(active, clock * u_time.pow(1.0 / n_masked), clock)
                # a uniformly chosen masked position: argmax of iid uniforms over the eligible ones
                pos = torch.where(eligible, u_pos, -1.0).argmax(-1)  # [N]
                cond, _ = runner.block_logits(state.x, start, end, refresh=True)  # [N, Lb, V]
                logits = process_logits(cond[rows, pos], None, 0.0, spec, suppress)  # [N, V] float64
                token, _ = sample_tokens(logits, config.temperature, config.top_k, config.top_p, generator)
                transfer = torch.zeros_like(eligible)
                transfer[rows, pos] = active
                tokens = torch.zeros_like(eligible, dtype=torch.long)
                tokens[rows, pos] = token
                prob = torch.full(eligible.shape, math.nan, dtype=torch.float64, device=device)
                prob[rows, pos] = token_probability(logits, token)
                r0 = start - state.P
                times[:, r0 : r0 + Lb] = torch.where(transfer, clock[:, None], times[:, r0 : r0 + Lb])
                state.commit(start, tokens, transfer, prob, active)
                state.update_finished()
        return runner.nfe, {"hitting_time": times}


__all__ = ["FirstHittingSampler"]
