"""First-hitting sampler (Zheng et al., "Masked Diffusion Models are Secretly Time-Agnostic Masked
Models and Exploit Inaccurate Categorical Sampling", arXiv 2409.02908; bd3lms `_semi_ar_sampler`).

The reverse process of a masked diffusion model unmasks tokens one at a time. With n masked
tokens at time t (linear schedule) the next unmasking happens at tau = t * u^(1/n), u ~ U(0, 1),
and unmasks one uniformly chosen masked position, sampled from p_theta(. | x_t). This is exact:
unlike a fixed-step sampler it never draws two tokens independently in one step. The models here
are time-agnostic, so the times do not change the tokens; they are returned in
`Rollout.extras["hitting_time"]` (per block, each block's clock starting at 1).

One forward pass per token; only the chosen position's logits are turned into a distribution.
The step (`_HittingStep`: draws, forward, token) has fixed shapes and no host synchronisation,
so it can be compiled (`compile: true`). Every active row unmasks exactly one token per step, so
the host knows when a block is done without reading the device; only rows that stop early at EOS
need the done-check, every `sync_every` steps (the tokens do not change: a block only ends early
when every row is done, and then nothing is decoded after it).
"""

from __future__ import annotations

import math

import torch

from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, Sampler
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeState, FullAttentionRunner, StepFunction, check_every, process_logits
from dare.sampling.ops import sample_tokens, token_probability, uniform


class _HittingStep:
    """One first-hitting step on a block: (tokens, transfer, prob) `[N, Lb]` and the factor `[N]`
    that moves each row's clock to its next hitting time (applied by the caller: no output of one
    compiled call is carried into the next, as CUDA graphs want). Draw order (the generator's
    stream): hitting times, positions, token."""

    def __init__(self, runner: FullAttentionRunner, config: SamplingConfig, generator: torch.Generator | None) -> None:
        self.runner, self.config, self.generator = runner, config, generator
        self.suppress = config.suppress_ids(runner.spec)

    def __call__(
        self, x: torch.Tensor, eligible: torch.Tensor, start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c, g = self.config, self.generator
        N, Lb = eligible.shape
        active = eligible.any(-1)  # [N] rows with a mask left (no-op rows commit nothing)
        n_masked = eligible.sum(-1).clamp(min=1).double()
        u_time, u_pos = uniform((N,), g, x.device), uniform((N, Lb), g, x.device)
        factor = u_time.pow(1.0 / n_masked)  # tau = t * u^(1/n)
        # a uniformly chosen masked position: argmax of iid uniforms over the eligible ones
        pos = torch.where(eligible, u_pos, -1.0).argmax(-1)  # [N]
        cond, _ = self.runner.forward(x, start, end, True)  # [N, Lb, V]
        chosen = cond.gather(1, pos[:, None, None].expand(-1, 1, cond.shape[-1]))[:, 0]  # [N, V]
        logits = process_logits(chosen, None, 0.0, self.runner.spec, self.suppress)  # float64
        token, _ = sample_tokens(logits, c.temperature, c.top_k, c.top_p, g)  # [N]
        transfer = torch.nn.functional.one_hot(pos, Lb).bool() & active[:, None]
        prob = torch.where(transfer, token_probability(logits, token)[:, None], math.nan)
        return token[:, None].expand(-1, Lb), transfer, prob, factor


@SAMPLERS.register("first_hitting")
class FirstHittingSampler(Sampler):
    name = "first_hitting"
    attention = "full"
    options = frozenset({"top_p", "top_k"}) | ENGINE_OPTIONS

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
        runner = FullAttentionRunner(model, state.spec, state, cache="none", cfg_scale=0.0)
        step = StepFunction(_HittingStep(runner, config, generator), state.x.device, runner, compile=config.compile)
        N, Lb = state.x.shape[0], config.block_length
        times = torch.full((N, config.gen_length), math.nan, dtype=torch.float64, device=state.x.device)
        for b in range(config.num_blocks):
            start = state.P + b * Lb
            r0 = start - state.P
            clock = torch.ones(N, dtype=torch.float64, device=state.x.device)  # each block's time runs 1 -> 0
            for i in range(Lb):  # one token per active row a step: Lb steps unmask the block
                if check_every(i, config.sync_every) and not bool(state.eligible(start, start + Lb).any()):
                    break  # every row is done (the block's only sync)
                tokens, transfer, prob, factor = step(state.x, state.eligible(start, start + Lb), start, start + Lb)
                active = transfer.any(-1)  # rows with a mask left: one each
                clock = torch.where(active, clock * factor, clock)
                runner.nfe += 1
                times[:, r0 : r0 + Lb] = torch.where(transfer, clock[:, None], times[:, r0 : r0 + Lb])
                state.commit(start, tokens, transfer, prob, active)
                state.update_finished()
        return runner.nfe, {"hitting_time": times}


__all__ = ["FirstHittingSampler"]
