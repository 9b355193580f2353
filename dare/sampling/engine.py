"""The block-decoding engine shared by the masked-diffusion samplers.

- `prepare_prompts`: token lists or an (input_ids, attention_mask) pair -> a left-padded batch,
  each prompt repeated `num_generations` times.
- `DecodeState`: the sequence being decoded plus the trajectory (per response token: the decode
  step and the model's probability of the token when it was decoded) and per-row EOS stopping;
  `revise` sends decoded tokens back to mask (a policy that `remasks`: MDPO's RCR).
- Runners: how the logits of the current block are computed.
  `FullAttentionRunner` (LLaDA, Dream): no cache, Fast-dLLM prefix cache or dual cache, and
  classifier-free guidance. `BlockCausalRunner` (SDAR): prompt prefill, block KV cache (or a
  full recompute), and the commit forward after each block.
  Both keep their K/V in one preallocated `StaticKVCache` per decode, written in place.
- `DecodeStep`: one denoising step (forward + unmasking rule) with fixed shapes and no host
  synchronisation; eager, or compiled with `torch.compile` (CUDA graphs on a GPU).
- `StepFunction`: a step function, eager or compiled (`compile_step`); the samplers with their own
  loop (first_hitting, few_step, rgas, llada2's token editing) run their steps through it too.
- `StepRecorder`: with `SamplingConfig.record_steps`, every denoising step's state, x0-prediction
  and confidences (MDPO's per-step rewards), `Rollout.extras[STEP_RECORD_KEYS]`.
- `decode_blocks`: the loop over blocks and steps that calls a `Policy` through `DecodeStep`;
  the host reads device values only for the done-check, every `sync_every` steps and once per
  block (a fixed-count schedule is mirrored on the host, so its steps need no check at all).

Shapes: N rows, P padded prompt length, T = P + gen_length, L block length, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from dare.models.layers import full_attention_mask
from dare.models.spec import DiffusionSpec, aligned_logits
from dare.sampling.kv_cache import StaticKVCache
from dare.sampling.ops import split_evenly, token_probability
from dare.sampling.policy import Policy

PromptsLike = list[list[int]] | tuple[torch.Tensor, torch.Tensor]


@dataclass
class PromptBatch:
    """Left-padded prompts, one row per generation."""

    input_ids: torch.Tensor  # [N, P] long, pad_token_id on the left
    attention_mask: torch.Tensor  # [N, P] bool, False on padding
    prompt_index: torch.Tensor  # [N] long: the prompt each row generates for


def prepare_prompts(
    prompts: PromptsLike, spec: DiffusionSpec, num_generations: int, device: torch.device
) -> PromptBatch:
    """Normalise prompts to a left-padded batch. A (input_ids, attention_mask) pair may be padded
    on either side; it is re-padded on the left so every response starts at column P."""
    if isinstance(prompts, tuple):
        if len(prompts) != 2:
            raise ValueError("prompts: a tuple must be (input_ids [B, P], attention_mask [B, P])")
        ids, mask = prompts
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"prompts: input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} must both be [B, P]"
            )
        rows = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
    elif isinstance(prompts, list):
        rows = [list(map(int, p)) for p in prompts]
    else:
        raise ValueError(
            f"prompts must be a list of token-id lists or an (input_ids, attention_mask) pair, got {type(prompts).__name__}"
        )
    if not rows:
        raise ValueError("prompts: empty batch")
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(f"prompts: prompt(s) {empty} have no tokens; every prompt needs at least one")
    P = max(len(r) for r in rows)
    N = len(rows) * num_generations
    input_ids = torch.full((N, P), spec.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((N, P), dtype=torch.bool)
    for i, r in enumerate(rows):
        for g in range(num_generations):
            n = i * num_generations + g
            input_ids[n, P - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention_mask[n, P - len(r) :] = True
    prompt_index = torch.arange(len(rows)).repeat_interleave(num_generations)
    return PromptBatch(input_ids.to(device), attention_mask.to(device), prompt_index.to(device))


@dataclass
class DecodeResult:
    """What a sampler returns to `generate` (which builds the `Rollout`)."""

    response: torch.Tensor  # [N, gen_length] decoded tokens (mask-free before the first end id)
    decode_step: torch.Tensor  # [N, gen_length] long, -1 where nothing was decoded
    confidence: torch.Tensor  # [N, gen_length] float64, NaN where nothing was decoded
    nfe: int
    extras: dict[str, torch.Tensor]


class DecodeState:
    """The sequence `x` `[N, T]` = [left-padded prompt | response], and its trajectory."""

    def __init__(self, batch: PromptBatch, gen_length: int, spec: DiffusionSpec, end_ids: tuple[int, ...]) -> None:
        N, P = batch.input_ids.shape
        device = batch.input_ids.device
        self.P, self.L = P, gen_length
        self.spec = spec
        self.mask_id = spec.mask_token_id
        self.eos_fill = spec.eos_token_id
        self.end_ids = torch.tensor(end_ids, dtype=torch.long, device=device)
        masks = torch.full((N, gen_length), spec.mask_token_id, dtype=torch.long, device=device)
        self.x = torch.cat([batch.input_ids, masks], dim=1)  # [N, T]
        # the response is always attended to (masks included); only prompt padding is hidden
        self.valid = torch.cat([batch.attention_mask, torch.ones_like(masks, dtype=torch.bool)], dim=1)  # [N, T]
        self.decode_step = torch.full((N, gen_length), -1, dtype=torch.long, device=device)
        self.confidence = torch.full((N, gen_length), math.nan, dtype=torch.float64, device=device)
        # the rank confidence each decoded token was drawn with (what a policy that `remasks` ranks it by)
        self.score = torch.full((N, gen_length), math.nan, dtype=torch.float64, device=device)
        self.row_steps = torch.zeros(N, dtype=torch.long, device=device)  # decoding iterations per row
        self.finished = torch.zeros(N, dtype=torch.bool, device=device)
        # every step's state / prediction / confidences, when the config asks (`record_steps`)
        self.recorder: StepRecorder | None = None

    @property
    def response(self) -> torch.Tensor:
        return self.x[:, self.P :]  # [N, L_gen] (a view)

    def eligible(self, start: int, end: int) -> torch.Tensor:
        """Masked positions of columns [start, end) in rows still decoding, bool `[N, end-start]`."""
        return (self.x[:, start:end] == self.mask_id) & ~self.finished[:, None]

    def commit(
        self, start: int, tokens: torch.Tensor, transfer: torch.Tensor, prob: torch.Tensor, active: torch.Tensor
    ) -> None:
        """Write `tokens[transfer]` into columns [start, start+L) and record the trajectory.
        tokens/transfer/prob `[N, L]`; active `[N]`: rows that took part in this step."""
        end = start + tokens.shape[1]
        r0, r1 = start - self.P, end - self.P
        self.x[:, start:end] = torch.where(transfer, tokens, self.x[:, start:end])
        steps = self.row_steps[:, None].expand_as(transfer)
        self.decode_step[:, r0:r1] = torch.where(transfer, steps, self.decode_step[:, r0:r1])
        self.confidence[:, r0:r1] = torch.where(transfer, prob, self.confidence[:, r0:r1])
        self.row_steps += active.long()

    def revise(self, start: int, transfer: torch.Tensor, score: torch.Tensor, remask: torch.Tensor) -> None:
        """After `commit`: keep the rank confidence `score` of the tokens committed at `transfer` and
        send the decoded tokens at `remask` back to mask (their trajectory cleared: a redraw writes
        it again). transfer/score/remask `[N, W]` for columns [start, start+W)."""
        end = start + transfer.shape[1]
        r0, r1 = start - self.P, end - self.P
        self.score[:, r0:r1] = torch.where(transfer, score, self.score[:, r0:r1])
        self.x[:, start:end].masked_fill_(remask, self.mask_id)
        self.decode_step[:, r0:r1].masked_fill_(remask, -1)
        self.confidence[:, r0:r1].masked_fill_(remask, math.nan)
        self.score[:, r0:r1].masked_fill_(remask, math.nan)

    def first_end(self) -> torch.Tensor:
        """Index of the first end id in each response, gen_length where there is none. `[N]`"""
        is_end = torch.isin(self.response, self.end_ids)  # [N, L_gen]
        first = is_end.long().argmax(-1)
        return torch.where(is_end.any(-1), first, torch.full_like(first, self.L))

    def update_finished(self) -> None:
        """A row is done once it holds an end id and every position before it is decoded: later
        positions can no longer change its response. Its remaining masks become eos."""
        first = self.first_end()
        pos = torch.arange(self.L, device=self.x.device)
        is_mask = self.response == self.mask_id
        masks_before = (is_mask & (pos < first[:, None])).any(-1)
        done = (first < self.L) & ~masks_before & ~self.finished
        # fixed shapes, no host branch: a no-op for rows that are not newly done
        self.response.masked_fill_(done[:, None] & is_mask, self.eos_fill)
        self.finished |= done

    def result(self, nfe: int, extras: dict[str, torch.Tensor] | None = None) -> DecodeResult:
        return DecodeResult(self.response.clone(), self.decode_step, self.confidence, nfe, extras or {})


# what `StepRecorder.tensors` returns (`Rollout.extras` keys), each `[N, S, L_gen]`, S = config.steps:
#   step_state       long, the response as step t saw it (mask ids where still masked)
#   step_prediction  long, the step's x0-prediction: the state with every masked position of the
#                    decoded block filled by the step's proposal (positions of later blocks stay masks)
#   step_confidence  float32, the probability of each proposed token (0 where none was proposed)
#   step_text_mask   bool, the prediction's tokens that make its text: up to and including its first
#                    end id, mask ids (later blocks) left out
STEP_RECORD_KEYS = ("step_state", "step_prediction", "step_confidence", "step_text_mask")


class StepRecorder:
    """Every denoising step of a decode (`SamplingConfig.record_steps`): what MDPO scores and trains
    on. Memory: two long and one float32 `[N, S, L]` tensors (S = `max_steps`, the config's steps),
    so it is opt-in. A row that is done (or a decode that ended early) is padded with its final
    response: state = prediction = the response, confidence 0 (nothing masked, nothing to train)."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.states: list[torch.Tensor] = []
        self.predictions: list[torch.Tensor] = []
        self.confidences: list[torch.Tensor] = []

    def record(
        self, state: DecodeState, start: int, tokens: torch.Tensor, prob: torch.Tensor, eligible: torch.Tensor
    ) -> None:
        """One step before its commit: tokens / prob / eligible `[N, L_block]` of columns from `start`."""
        if len(self.states) == self.max_steps:
            raise RuntimeError(
                f"record_steps: the decode took more than steps={self.max_steps} denoising steps; "
                "recording needs a fixed step count"
            )
        r0, r1 = start - state.P, start - state.P + tokens.shape[1]
        now = state.response.clone()  # [N, L]
        pred = now.clone()
        pred[:, r0:r1] = torch.where(eligible, tokens, pred[:, r0:r1])
        conf = torch.zeros(now.shape, dtype=torch.float32, device=now.device)
        conf[:, r0:r1] = torch.where(eligible, prob.float(), 0.0)
        self.states.append(now)
        self.predictions.append(pred)
        self.confidences.append(conf)

    def tensors(self, state: DecodeState) -> dict[str, torch.Tensor]:
        """`STEP_RECORD_KEYS` -> `[N, S, L]`, padded to `max_steps` with the final response."""
        final = state.response.clone()
        pad = self.max_steps - len(self.states)
        states = torch.stack(self.states + [final] * pad, 1)
        preds = torch.stack(self.predictions + [final] * pad, 1)
        confs = torch.stack(self.confidences + [torch.zeros_like(final, dtype=torch.float32)] * pad, 1)
        is_end = torch.isin(preds, state.end_ids)  # [N, S, L]
        first = torch.where(is_end.any(-1), is_end.long().argmax(-1), state.L)  # [N, S]
        pos = torch.arange(state.L, device=preds.device)
        text = (pos <= first[..., None]) & (preds != state.mask_id)
        return dict(zip(STEP_RECORD_KEYS, (states, preds, confs, text)))


# ---------------------------------------------------------------------------------------------
# Runners: the logits of the current block
# ---------------------------------------------------------------------------------------------


class FullAttentionRunner:
    """Block logits for bidirectional models (LLaDA, Dream), aligned so `[:, i]` predicts token i.

    cache="none": a full forward every step.
    cache="prefix" (Fast-dLLM): a full forward at block start keeps K/V of columns < block start;
    later steps feed x[:, start:] (block + masked suffix) on top of that prefix.
    cache="dual" (Fast-dLLM): the block-start forward keeps K/V of the whole sequence; later steps
    feed only the block and overwrite its K/V in place (`replace_position`); the suffix K/V stay
    as computed at block start (approximate by design).
    With shifted logits (Dream) a window cannot predict its own first token: the cached steps
    shift inside the window, so the block's first token must be decoded from the full forward
    at block start (the engine's `forced_first`, as Fast-dLLM does).
    """

    def __init__(self, model: torch.nn.Module, spec: DiffusionSpec, state: DecodeState, cache: str, cfg_scale: float):
        self.model, self.spec, self.cache_mode, self.cfg_scale = model, spec, cache, cfg_scale
        self.P = state.P
        self.prompt_mask = state.valid.clone()
        self.prompt_mask[:, self.P :] = False  # [N, T] True on real prompt tokens
        self.valid = state.valid if cfg_scale == 0 else torch.cat([state.valid, state.valid])  # [N(*2), T]
        # the padding mask the forwards get: none for an unpadded batch (read once here), so the
        # model's attention never reads validity from the device inside the decode loop
        self.mask = self.padding_mask()
        # padded and no cache: the full mask `[N, 1, T, T]` (a query always sees itself) and the
        # positions, built once, exactly as the model would build them from the 2-D mask at every
        # forward after reading whether any key is padded (a device read per step)
        self.full_mask = self.full_positions = None
        if self.mask is not None and cache == "none":
            self.full_mask, self.full_positions = full_attention_mask(self.valid)
        # one preallocated cache for the whole decode, refilled in place at every block start
        self.cache = None if cache == "none" else StaticKVCache(state.x.shape[1])
        self.nfe = 0

    def padding_mask(self) -> torch.Tensor | None:
        return self.valid if not bool(self.valid.all()) else None

    @property
    def forced_first(self) -> bool:
        return self.spec.shift_logits and self.cache_mode != "none"

    def start(self, x: torch.Tensor) -> None:
        pass

    def end_block(self, x: torch.Tensor, start: int, end: int) -> None:
        pass

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale == 0:
            return x
        # unconditional branch: the prompt replaced by mask tokens (LLaDA's CFG)
        uncond = x.masked_fill(self.prompt_mask, self.spec.mask_token_id)
        return torch.cat([x, uncond])  # [2N, T]

    def block_logits(
        self, x: torch.Tensor, start: int, end: int, refresh: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(conditional, unconditional or None) logits of columns [start, end), each `[N, L, V]`."""
        self.nfe += 1
        return self.forward(x, start, end, refresh)

    @torch.no_grad()  # decoding only (the static cache is written in place)
    def forward(self, x: torch.Tensor, start: int, end: int, refresh: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`block_logits` without the forward count (what a compiled step calls: no Python
        counter in the compiled code)."""
        inp = self._inputs(x)
        L = end - start
        if self.full_mask is not None:  # padded, no cache
            out = self.model(inp, attention_mask=self.full_mask, position_ids=self.full_positions)
            logits = aligned_logits(out.logits[:, start - 1 : end], self.spec)[:, 1:]  # [N, L, V]
        elif self.cache_mode == "none" or refresh:
            if self.cache is not None:
                self.cache.reset()
            out = self.model(
                inp, attention_mask=self.mask, past_key_values=self.cache, use_cache=self.cache is not None
            )
            # align on columns [start-1, end) so a shifted model's column `start` is predicted too
            logits = aligned_logits(out.logits[:, start - 1 : end], self.spec)[:, 1:]  # [N, L, V]
            if self.cache_mode == "prefix":
                self.cache.crop(start)
        elif self.cache_mode == "prefix":
            out = self.model(inp[:, start:], attention_mask=self.mask, past_key_values=self.cache, use_cache=False)
            logits = aligned_logits(out.logits, self.spec)[:, :L]  # local shift inside the window
        else:  # dual
            out = self.model(
                inp[:, start:end], attention_mask=self.mask, past_key_values=self.cache, replace_position=start
            )
            logits = aligned_logits(out.logits, self.spec)
        if self.cfg_scale == 0:
            return logits, None
        n = x.shape[0]
        return logits[:n], logits[n:]


class BlockCausalRunner:
    """Block logits for block-causal models (SDAR).

    Positions are offset per row so the response starts on a block boundary
    (block = position // block_size): every row's blocks line up with the decoding blocks, and a
    row decodes the same whether batched with longer prompts or alone (RoPE is relative, so the
    offset changes nothing else).

    cache="block": the prompt is prefilled once; each step feeds only the current block and reads
    the cache without storing (upstream `store_kv=False`); a finished block is committed with one
    more forward (`use_cache=True`). cache="none": every step recomputes [prompt | blocks so far];
    the future masked blocks are invisible to block attention anyway.
    """

    forced_first = False

    def __init__(self, model: torch.nn.Module, spec: DiffusionSpec, state: DecodeState, cache: str):
        self.model, self.spec, self.cache_mode = model, spec, cache
        self.P = state.P
        self.valid = state.valid
        real = state.valid[:, : self.P].long()
        prompt_len = real.sum(-1)  # [N]
        offset = (-prompt_len) % spec.block_size  # response start becomes a multiple of block_size
        pos = (state.valid.long().cumsum(-1) - 1).clamp(min=0)  # [N, T], pads at 0
        self.positions = pos + offset[:, None]
        self.cache = StaticKVCache(state.x.shape[1]) if cache == "block" else None
        self.nfe = 0

    def _forward(self, ids: torch.Tensor, start: int, end: int, use_cache: bool):
        self.nfe += 1
        return self._call(ids, start, end, use_cache)

    def _call(self, ids: torch.Tensor, start: int, end: int, use_cache: bool):
        return self.model(
            ids,
            attention_mask=self.valid[:, :end],
            position_ids=self.positions[:, start:end],
            past_key_values=self.cache,
            use_cache=use_cache,
        )

    @torch.no_grad()
    def start(self, x: torch.Tensor) -> None:
        if self.cache_mode == "block":
            self.cache.reset()
            self._forward(x[:, : self.P], 0, self.P, use_cache=True)

    def block_logits(
        self, x: torch.Tensor, start: int, end: int, refresh: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.nfe += 1
        return self.forward(x, start, end, refresh)

    @torch.no_grad()  # decoding only (the static cache is written in place)
    def forward(self, x: torch.Tensor, start: int, end: int, refresh: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`block_logits` without the forward count."""
        if self.cache_mode == "block":
            return self._call(x[:, start:end], start, end, use_cache=False).logits, None
        out = self.model(x[:, :end], attention_mask=self.valid[:, :end], position_ids=self.positions[:, :end])
        return out.logits[:, start:end], None

    @torch.no_grad()
    def end_block(self, x: torch.Tensor, start: int, end: int) -> None:
        if self.cache_mode == "block":
            self._forward(x[:, start:end], start, end, use_cache=True)


Runner = FullAttentionRunner | BlockCausalRunner


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def process_logits(
    logits: torch.Tensor,
    uncond: torch.Tensor | None,
    cfg_scale: float,
    spec: DiffusionSpec,
    suppress_ids: tuple[int, ...],
) -> torch.Tensor:
    """float64 logits `[..., V]` ready to sample: guidance applied, the mask token (never a valid
    prediction; trained models give it ~0, random ones do not) and `suppress_ids` at -inf."""
    out = logits.double()
    if uncond is not None:
        un = uncond.double()
        out = un + (cfg_scale + 1.0) * (out - un)
    out[..., spec.mask_token_id] = -math.inf
    if suppress_ids:
        out[..., list(suppress_ids)] = -math.inf
    return out


class StepOutput(NamedTuple):
    """What one `DecodeStep` returns, each `[N, W]` over the step's columns."""

    tokens: torch.Tensor  # proposed tokens
    transfer: torch.Tensor  # bool, the positions to commit
    prob: torch.Tensor  # the probability of each committed token (NaN elsewhere; of every token when recording)
    score: torch.Tensor  # the rank confidence of each proposal
    remask: torch.Tensor | None  # bool, decoded tokens sent back to mask (None unless the policy `remasks`)


class DecodeStep:
    """One denoising step of a block as one function of tensors: the forward pass and the
    unmasking rule (logits processing, `propose`, `select`, the trajectory probability), with
    fixed shapes and no host synchronisation. Eager by default; `compile=True` wraps it in
    `torch.compile` (on CUDA with mode="reduce-overhead": CUDA graphs, one per (batch, block,
    cache length) bucket, the static cache's buffers marked as static addresses).

    Counts (`Policy.plan`) are computed by the caller, outside the compiled function: they depend
    on the step number, which would otherwise specialise the compiled code at every step."""

    def __init__(
        self,
        state: DecodeState,
        runner: Runner,
        policy: Policy,
        *,
        cfg_scale: float,
        suppress_ids: tuple[int, ...],
        confidence_end_inf: bool,
        compile: bool = False,
    ) -> None:
        self.state, self.runner, self.policy = state, runner, policy
        self.cfg_scale, self.suppress_ids, self.confidence_end_inf = cfg_scale, suppress_ids, confidence_end_inf
        self.compile = compile
        # a recording decode keeps the probability of every proposed token, not only the committed ones
        self.full_prob = state.recorder is not None
        # EOSER scales the model's own eos ids (the official `tokenizer.eos_token_id`), not the extra end ids
        self.eos_ids = torch.tensor(state.spec.eos_token_ids, dtype=torch.long, device=state.x.device)
        self._eos_factors: dict[tuple[int, int], torch.Tensor] = {}
        self._run = StepFunction(self.step, state.x.device, runner, compile=compile)

    def fn(self, *args) -> StepOutput:
        """`step`, compiled or eager, counting its forward pass (outside the compiled code)."""
        self.runner.nfe += 1
        return self._run(*args, self._eos_factor(*args[-2:]))

    def _eos_factor(self, step: int, num_steps: int) -> torch.Tensor | None:
        """The policy's EOSER factor as a 0-d device tensor (a Python float would specialise the
        compiled step on its value), made once per (step, block steps)."""
        factor = self.policy.end_confidence_factor(step, num_steps)
        if factor is None:
            return None
        key = (step, num_steps)
        if key not in self._eos_factors:
            self._eos_factors[key] = torch.tensor(factor, dtype=torch.float64, device=self.state.x.device)
        return self._eos_factors[key]

    def step(
        self,
        x: torch.Tensor,
        eligible: torch.Tensor,
        k: torch.Tensor | None,
        start: int,
        end: int,
        refresh: bool,
        force: bool,
        step: int,
        num_steps: int,
        eos_factor: torch.Tensor | None = None,
    ) -> StepOutput:
        """The step's `StepOutput` for columns [start, end) (the block; for a policy that `remasks`,
        every response column up to the block's end). `eos_factor` (EOSER): multiplies the
        confidence of proposed eos tokens before selection."""
        cond, uncond = self.runner.forward(x, start, end, refresh)
        logits = process_logits(cond, uncond, self.cfg_scale, self.state.spec, self.suppress_ids)  # [N, L, V] f64
        tokens, conf = self.policy.propose(logits)
        remask = None
        if force:  # the block's first token, from the block-start forward (shifted logits + cache)
            first = torch.zeros_like(eligible)
            first[:, 0] = True
            transfer = eligible & first
        else:
            if self.confidence_end_inf:
                conf = conf.masked_fill(torch.isin(tokens, self.state.end_ids), -math.inf)
            if eos_factor is not None:
                conf = torch.where(torch.isin(tokens, self.eos_ids), conf * eos_factor, conf)
            if self.policy.remasks:
                transfer, remask = self.revise(x, conf, eligible, k, start, end, step, num_steps)
            else:
                transfer = self.policy.select(conf, eligible, k, step, num_steps) & eligible
        prob = token_probability(logits, tokens)
        if not self.full_prob:
            prob = torch.where(transfer, prob, math.nan)
        return StepOutput(tokens, transfer, prob, conf, remask)

    def revise(
        self, x: torch.Tensor, conf: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor,
        start: int, end: int, step: int, num_steps: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(transfer, remask) `[N, W]` of a policy that `remasks`: the decoded tokens compete with
        the step's proposals for decoded + k places, each ranked by the confidence it was drawn
        with, so the count of tokens held after the step follows the schedule."""
        s = self.state
        decoded = (x[:, start:end] != s.mask_id) & ~s.finished[:, None]  # [N, W]
        running = torch.where(eligible, conf, s.score[:, start - s.P : end - s.P])  # [N, W]
        keep = self.policy.select(running, eligible | decoded, k + decoded.sum(-1), step, num_steps)
        return keep & eligible, decoded & ~keep


# torch.compile backend of `compile=True`; None = inductor. Tests set "aot_eager" (same graph
# capture and guards, no code generation) to keep CPU compile times to seconds.
COMPILE_BACKEND: str | None = None


def compile_step(fn, device: torch.device, runner: Runner | None):
    """`torch.compile` for a decode step. On CUDA: mode="reduce-overhead" (CUDA-graph capture per
    shape bucket) with the cache buffers at static addresses, so the in-place cache writes can be
    replayed by the graph; elsewhere the default inductor mode."""
    if COMPILE_BACKEND is not None:
        return torch.compile(fn, backend=COMPILE_BACKEND)
    if device.type == "cuda":
        if getattr(runner, "cache", None) is not None:
            runner.cache.mark_static()
        return torch.compile(fn, mode="reduce-overhead")
    return torch.compile(fn)


class StepFunction:
    """A decode step (fixed shapes, no host synchronisation) called eagerly, or through
    `compile_step` when `compile` is set: `DecodeStep`'s, and the steps of the samplers with their
    own loop (first_hitting, few_step, rgas, llada2's token editing).

    Compilation starts once the runner's KV cache buffers exist (SDAR: after the eager prefill;
    Fast-dLLM caches: after the first, eager, block-start forward), so they are allocated outside
    the compiled code and keep their address (a CUDA graph's static inputs). Per-step values the
    step computes with go in as tensors (few_step's counts): a Python number argument specialises
    the compiled code on its value (one recompile, then Dynamo treats it as dynamic)."""

    def __init__(self, fn, device: torch.device, runner: Runner | None = None, *, compile: bool = False) -> None:
        self.fn, self.device, self.runner, self.compile = fn, device, runner, compile
        self._compiled = None

    def __call__(self, *args):
        cache = getattr(self.runner, "cache", None)
        if self.compile and self._compiled is None and (cache is None or cache.keys):
            self._compiled = compile_step(self.fn, self.device, self.runner)
        step = self._compiled if self._compiled is not None else self.fn
        return step(*args)


def check_every(step: int, sync_every: int) -> bool:
    """Whether the host reads the done flag before `step` (0-based): every `sync_every` steps. In
    between, steps run on device values alone; a step taken after every row is done commits
    nothing (it may still draw noise, which only matters to a later block)."""
    return step % sync_every == 0


def _host_count(policy: Policy, masks_left: int, step: int, num_steps: int) -> int | None:
    """The planned count of a row with `masks_left` masks (None: the rule has no fixed count),
    computed on the host: every active row of a fixed-count block holds the same number of masks
    (or, for rules that may unmask more than planned, fewer), so this decides without a sync
    whether a step plans anything at all."""
    k = policy.plan(torch.tensor([masks_left]), step, num_steps)
    return None if k is None else min(int(k[0]), masks_left)


def _decode_block(
    state: DecodeState, runner: Runner, policy: Policy, step_fn: DecodeStep,
    start: int, end: int, num_steps: int, sync_every: int, first: int = 0, stop: int | None = None,
) -> None:  # fmt: skip
    """Decode columns [start, end) until no mask is left. The host looks at device values only
    every `sync_every` steps (the done-check); in between, steps of rows that are done commit
    nothing, so the tokens are those of `sync_every=1` (greedy: identical; sampled: rules that
    run a data-dependent number of steps may draw extra noise before the check sees the end).

    `first` / `stop`: run only the block's steps [first, stop) of its schedule (a resumed decode,
    `decode_blocks`' `step_range`); the block then holds the state after step `first - 1`.

    A policy that `remasks` (RCR) works on the columns [P, end): the tokens of earlier blocks stay
    in its ranking (the official RCR loop ranks every decoded token), and its rows never stop
    early at an end id (a token before it may still go back to mask), so the whole schedule runs."""
    lo = state.P if policy.remasks else start  # the first column a step ranks and writes
    refreshed = False
    step, iteration = first, 0
    masks_left = end - start  # host mirror: an upper bound on the masks of every active row
    for skipped in range(first):  # the mirror after the steps a resumed decode does not run
        planned = _host_count(policy, masks_left, skipped, num_steps)
        if planned == 0:  # as in the loop below: a step that plans nothing is skipped
            continue
        masks_left = 0 if policy.takes_all(skipped, num_steps) else masks_left - (planned or 0)
    # every step unmasks >= 1 token per active row or follows a schedule of num_steps steps
    max_iterations = max(num_steps, end - start) + sync_every
    while True:
        if masks_left == 0:  # a fixed-count schedule has unmasked the whole block
            break
        if stop is not None and step >= stop:
            break
        if check_every(iteration, sync_every) and not bool(state.eligible(lo, end).any()):  # the only sync
            break
        iteration += 1
        if step >= max_iterations:
            raise RuntimeError(f"block at column {start} still has masks after {step} steps ({type(policy).__name__})")
        force = runner.forced_first and not refreshed
        eligible = state.eligible(lo, end)  # [N, W]
        k = None
        if not force:
            planned = _host_count(policy, masks_left, step, num_steps)
            if planned == 0:
                step += 1  # nothing planned for this step: skip its forward pass
                continue
            if planned is not None:
                remaining = eligible.sum(-1)
                k = torch.minimum(policy.plan(remaining, step, num_steps), remaining)
                masks_left -= planned
        else:
            masks_left -= 1
        out = step_fn.fn(state.x, eligible, k, lo, end, not refreshed, force, step, num_steps)
        refreshed, prob = True, out.prob
        if state.recorder is not None:  # the state before the commit, the full prediction
            state.recorder.record(state, lo, out.tokens, prob, eligible)
            prob = torch.where(out.transfer, prob, math.nan)
        state.commit(lo, out.tokens, out.transfer, prob, eligible.any(-1))
        if out.remask is not None:
            state.revise(lo, out.transfer, out.score, out.remask)
        if not policy.remasks:
            state.update_finished()
        if not force and policy.takes_all(step, num_steps):
            masks_left = 0
        step += 1


def decode_blocks(
    state: DecodeState,
    runner: Runner,
    policy: Policy,
    *,
    block_length: int,
    steps: int,
    cfg_scale: float,
    suppress_ids: tuple[int, ...],
    confidence_end_inf: bool,
    sync_every: int = 1,
    compile: bool = False,
    step_range: tuple[int, int] | None = None,
) -> None:
    """Decode the response block by block (semi-autoregressive). Within a block, repeat
    plan -> forward -> propose -> select -> commit until the block has no mask left; the host
    checks for that (and for rows that hit EOS) every `sync_every` steps and once per block.

    `step_range` (a, b): run only the schedule's steps a..b-1, counted over all blocks (block i
    owns the `split_evenly(steps, num_blocks)[i]` steps after those of the blocks before it), on a
    `state` that holds the response after step a-1 (`dare.sampling.generate.continue_generate`).
    Every block the range enters restarts per-row generators at that block's stream, as a full
    decode does, so a range starting on a block boundary continues exactly as the full decode
    would; one starting inside a block draws that block's stream from its start."""
    num_blocks = state.L // block_length
    steps_per_block = split_evenly(steps, num_blocks)
    step_fn = DecodeStep(
        state, runner, policy, cfg_scale=cfg_scale, suppress_ids=suppress_ids,
        confidence_end_inf=confidence_end_inf, compile=compile,
    )  # fmt: skip
    runner.start(state.x)
    lo, hi = step_range if step_range is not None else (0, steps)
    offset = 0  # the global index of block b's first step
    for b, num_steps in enumerate(steps_per_block):
        start = state.P + b * block_length
        end = start + block_length
        first, stop = max(lo - offset, 0), min(hi - offset, num_steps)
        offset += num_steps
        if step_range is not None and first >= stop:  # the range does not touch this block
            continue
        if bool(state.finished.all()):
            break
        if hasattr(policy.generator, "start_block"):  # per-row generators restart per block: a row's
            policy.generator.start_block(b)  # noise never depends on how long other rows' blocks took
        stop_at = None if step_range is None else stop
        _decode_block(state, runner, policy, step_fn, start, end, num_steps, sync_every, first, stop_at)
        if b + 1 < num_blocks and not bool(state.finished.all()):
            runner.end_block(state.x, start, end)


__all__ = [
    "BlockCausalRunner",
    "DecodeResult",
    "DecodeStep",
    "DecodeState",
    "FullAttentionRunner",
    "PromptBatch",
    "Runner",
    "STEP_RECORD_KEYS",
    "StepRecorder",
    "StepFunction",
    "StepOutput",
    "check_every",
    "compile_step",
    "decode_blocks",
    "prepare_prompts",
    "process_logits",
]
