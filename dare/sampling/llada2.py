"""LLaDA2's block decoding (`LLaDA2MoeModelLM.generate` of inclusionAI/LLaDA2.0-mini and, with
`editing_threshold`, of LLaDA2.1-mini) for block-causal models.

Per block (block length: the model's `block_size`, 32 for LLaDA2), up to steps_per_block
iterations over the block: every masked position gets its argmax (T = 0) or a
temperature / top-k / top-p draw, with conf = p(token); the step's count k comes from the fixed
schedule split_evenly(block_length, steps_per_block) (remainder first, the release's
`_get_num_transfer_tokens`); every masked position with conf > `threshold` (default 0.95, the
release's) is committed when there are at least k of them, else the k most confident. A row stops
once it holds an EOS with nothing masked before it; the response is cut after its first EOS (the
release stops after the block holding the first EOS and returns up to it: the same tokens).

It runs on the block KV cache of `BlockCausalRunner` (the release recomputes the whole window
every step, `cache="none"` here; block attention makes both give the same logits).

Differences from the released `generate`, by design:
- temperature 0 is argmax (as in 2.1; 2.0's code still draws from softmax(logits) at T = 0);
- the mask token is never proposed (its logit is -inf, as in every dare sampler);
- blocks are aligned to the response start, so prompts of any length batch together; the release
  aligns blocks to absolute positions and decodes the prompt's last partial block together with
  the first response tokens. They coincide when the prompt length is a multiple of block_length;
- `steps` counts all blocks (steps_per_block = steps / num_blocks; the release's `steps` is per
  block), and is at most gen_length (no zero-token steps).

LLaDA2.1's token editing (`editing_threshold`, off by default; 2.1 uses 0.9): every iteration
also rewrites the block's already decoded tokens whose new prediction differs with probability
above `editing_threshold`; a block ends when it has no mask and an iteration edits nothing, or
after `max_post_steps` iterations without a mask. A rewritten token's decode step and confidence
are those of its last write. Rows stop at an EOS only at block ends (an edit may still move it
within the block). 2.1's `num_to_transfer` (1) is the schedule's k at steps = gen_length.

Static step: without editing, llada2 is the block engine's (`decode_blocks`: `sync_every`,
`compile`). With editing, each iteration's forward and rule (`_EditStep`) is a fixed-shape step
without host synchronisation (compiled with `compile: true`), the row bookkeeping is tensor
arithmetic, and the host reads "does any row still iterate on this block" every `sync_every`
iterations; an iteration after every row has settled commits nothing (greedy tokens are those of
`sync_every=1`; sampled ones may differ in later blocks, whose noise then comes later in the stream).
"""

from __future__ import annotations

import math

import torch

from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS, Policy
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeState, Runner, StepFunction, check_every, process_logits
from dare.sampling.ops import split_evenly, token_probability
from dare.sampling.sdar import SDARPolicy, SDARSampler

RELEASED_THRESHOLD = 0.95  # `generate(threshold=0.95)` of both LLaDA2 releases


class LLaDA2Policy(SDARPolicy):
    """SDAR's dynamic-threshold rule with the release's fixed per-step schedule."""

    def plan(self, remaining: torch.Tensor, step: int, num_steps: int) -> torch.Tensor | None:
        schedule = split_evenly(self.config.block_length, num_steps)
        k = schedule[step] if step < num_steps else 1  # the schedule sums to the block: a safety net
        return torch.full_like(remaining, k)


class _EditStep:
    """One LLaDA2.1 iteration on a block: forward, unmask (threshold or top-k) and edit.
    (x `[N, T]`, masked `[N, L]`, rows `[N]`, k `[N]`) -> (tokens, transfer, prob, edited `[N]`)."""

    def __init__(self, runner: Runner, policy: LLaDA2Policy, state: DecodeState, config: SamplingConfig) -> None:
        self.runner, self.policy, self.config = runner, policy, config
        self.spec, self.end_ids = state.spec, state.end_ids
        self.suppress = config.suppress_ids(state.spec)

    def __call__(
        self, x: torch.Tensor, masked: torch.Tensor, rows: torch.Tensor, k: torch.Tensor,
        start: int, end: int, refresh: bool, step: int, num_steps: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        c = self.config
        cond, _ = self.runner.forward(x, start, end, refresh)
        logits = process_logits(cond, None, 0.0, self.spec, self.suppress)  # [N, L, V] float64
        tokens, conf = self.policy.propose(logits)
        if c.confidence_eos_eot_inf:
            conf = conf.masked_fill(torch.isin(tokens, self.end_ids), -math.inf)
        unmask = self.policy.select(conf, masked, k, step, num_steps) & masked
        edit = rows[:, None] & ~masked & (conf > c.editing_threshold) & (tokens != x[:, start:end])
        transfer = unmask | edit
        prob = torch.where(transfer, token_probability(logits, tokens), math.nan)
        return tokens, transfer, prob, edit.any(-1)


@SAMPLERS.register("llada2")
class LLaDA2Sampler(SDARSampler):
    name = "llada2"
    remasking_choices = ("low_confidence_dynamic",)
    options = frozenset(
        {"top_p", "top_k", "cache", "threshold", "confidence_eos_eot_inf", "remasking", "editing_threshold",
         "max_post_steps"}
    ) | ENGINE_OPTIONS  # fmt: skip

    @classmethod
    def check_config(cls, config: SamplingConfig) -> None:
        if config.threshold is None:  # resolved here so the stored config says what ran
            object.__setattr__(config, "threshold", RELEASED_THRESHOLD)
        if config.steps is not None and config.steps > config.gen_length:
            raise ValueError(
                f"steps={config.steps}: llada2 takes at most gen_length={config.gen_length} steps "
                "(at most one step per token)"
            )
        if config.editing_threshold is not None and not 0 < config.editing_threshold <= 1:
            raise ValueError(f"editing_threshold={config.editing_threshold!r}: must be in (0, 1] or None (off)")
        if not isinstance(config.max_post_steps, int) or config.max_post_steps < 0:
            raise ValueError(f"max_post_steps={config.max_post_steps!r}: must be an integer >= 0")

    def policy(self, config: SamplingConfig, generator: torch.Generator | None) -> Policy:
        return LLaDA2Policy(config, generator)

    def decode(
        self, model: torch.nn.Module, state: DecodeState, config: SamplingConfig, generator: torch.Generator | None
    ) -> tuple[int, dict[str, torch.Tensor]]:
        if config.editing_threshold is None:
            return super().decode(model, state, config, generator)
        runner = self.runner(model, state, config)
        policy = self.policy(config, generator)
        step_fn = StepFunction(_EditStep(runner, policy, state, config), state.x.device, runner, compile=config.compile)
        runner.start(state.x)
        steps_per_block = split_evenly(config.steps, config.num_blocks)
        for b, num_steps in enumerate(steps_per_block):
            if bool(state.finished.all()):
                break
            start = state.P + b * config.block_length
            self._edit_block(state, runner, policy, step_fn, config, start, num_steps)
            state.update_finished()
            if b + 1 < config.num_blocks and not bool(state.finished.all()):
                runner.end_block(state.x, start, start + config.block_length)
        return runner.nfe, {}

    @staticmethod
    def _edit_block(
        state: DecodeState, runner: Runner, policy: LLaDA2Policy, step_fn: StepFunction, config: SamplingConfig,
        start: int, num_steps: int,
    ) -> None:  # fmt: skip
        """LLaDA2.1's loop over one block: unmask (threshold or top-k) and edit, row by row until a
        row has no mask and edits nothing, or has spent its post steps. The host reads `rows`
        only every `sync_every` iterations (and at the bound)."""
        end = start + config.block_length
        rows = ~state.finished  # [N] rows still iterating on this block
        post = torch.zeros_like(state.row_steps)
        bound = config.block_length + config.max_post_steps + 1  # each step unmasks or is a post step
        for step in range(bound + 1):
            masked = (state.x[:, start:end] == state.mask_id) & rows[:, None]  # [N, L]
            no_mask = ~masked.any(-1)
            post += (no_mask & rows).long()
            rows = rows & (post <= config.max_post_steps)
            if (check_every(step, config.sync_every) or step == bound) and not bool(rows.any()):
                return
            if step == bound:
                raise RuntimeError(f"llada2: block at column {start} did not settle")  # unreachable: bounded above
            remaining = masked.sum(-1)
            k = torch.minimum(policy.plan(remaining, step, num_steps), remaining)
            tokens, transfer, prob, edited = step_fn(state.x, masked, rows, k, start, end, step == 0, step, num_steps)
            runner.nfe += 1
            state.commit(start, tokens, transfer, prob, rows)
            rows = rows & ~(no_mask & ~edited)


__all__ = ["RELEASED_THRESHOLD", "LLaDA2Policy", "LLaDA2Sampler"]
