"""A differentiable reverse process for reward backpropagation (DRAKES; Wang et al., "Fine-Tuning
Discrete Diffusion Models via Reward Optimization with Applications to DNA and Protein Design",
arXiv 2410.13643; official code ChenyuWang-Monica/DRAKES `finetune_reward_bp.py`,
`diffusion_gosai_update.py` `_ddpm_update_finetune_gradient`, `_sample_categorical_gradient`).

The process is the ancestral ("origin") masked-diffusion sampler with a linear schedule: within a
block of the response, step t -> s (t_k = 1 - k / steps_per_block) reveals every masked position
independently with probability r = (t - s) / t, drawing its token from p_theta(. | x_t):

    q(x_s^i | x_t) = r * p_theta(v | x_t)_i   for a token v        (mask column excluded from p_theta)
                   = 1 - r                     for [MASK]

Relaxation (the last `truncate_steps` steps of the whole trajectory):
    x~ = softmax((log q + G) / tau),  G = -log(-log u),  u ~ U(0, 1) in float64
         (G and log q's constant offsets in float64, added to float32 log p_theta, softmax in float32)
    x_s = c * x_t + (1 - c) * x~,     c = 1 - x_t[MASK]      (decoded tokens carried over)
and the model reads the soft one-hot state through `inputs_embeds = x_s @ E` (E the input
embedding matrix). Earlier steps draw the same categorical by Gumbel-max (argmax(log q + G), the
exact sample) under `torch.no_grad`, so parameters get no gradient from them and their activations
are never kept: memory grows with `truncate_steps`, not with `steps`. The final state is
straight-through: value one-hot(argmax) (the [MASK] column dropped), gradient of the relaxed state.

KL to a reference model along the same trajectory (the exact per-step KL of the transition
kernels): for step t -> s, KL(q_theta || q_ref) = sum over masked i of r * KL(p_theta^i || p_ref^i)
(the [MASK] branch has the same probability 1 - r under both); with a soft state each position is
weighted by its [MASK] mass x_t^i[MASK]. The reference is evaluated on the same soft inputs (its
parameters frozen), so the KL's gradient also flows through the states.

As tau -> 0 the relaxed state tends to the one-hot of the hard sample drawn with the same noise.

Families: the model is called through its `DiffusionSpec` only. Full attention (LLaDA; Dream with
`aligned_logits` for its shifted logits): the whole sequence every step, semi-autoregressive blocks
of `block_length` (default: one block). Block attention (SDAR): `block_length` must equal the
model's `block_size`; positions are response-aligned (`response_aligned_positions`) so decoding
blocks are the model's blocks, and the whole sequence is fed (future masked blocks are invisible
to block-causal attention). No KV cache (a cache would not carry gradients across steps).

Shapes: B rows, P padded prompt length, L gen_length, V vocabulary, d hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dare.diffusion.noise import response_aligned_positions
from dare.models.spec import DiffusionSpec, ReferenceFn, aligned_logits
from dare.registry import Registry
from dare.sampling.ops import gumbel_argmax_from_uniform

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class RelaxedConfig:
    """Settings of the relaxed reverse process.

    Attributes:
        steps: reverse steps in total (split evenly over the blocks).
        gen_length: response positions L.
        block_length: semi-AR block length; None = gen_length (full attention) or the model's
            block_size (block attention).
        tau: Gumbel-softmax temperature of the relaxed steps.
        truncate_steps: how many final steps are relaxed and keep gradients (0 = none).
        straight_through: every relaxed state is straight-through (value one-hot(argmax), i.e. the
            exact Gumbel-max sample of the step, gradient of the relaxed state), so the model only
            ever reads hard tokens, as at inference; False = the official soft states.
    """

    steps: int = 16
    gen_length: int = 16
    block_length: int | None = None
    tau: float = 1.0
    truncate_steps: int = 4
    straight_through: bool = False

    def resolved_block_length(self, spec: DiffusionSpec) -> int:
        if spec.attention == "block":
            if self.block_length not in (None, spec.block_size):
                raise ValueError(
                    f"relaxed sampling of a block-attention model decodes its own blocks: block_length must be "
                    f"the model's block_size {spec.block_size} (or null), got {self.block_length}"
                )
            return int(spec.block_size)
        return self.block_length or self.gen_length

    def validate(self, spec: DiffusionSpec) -> None:
        if self.steps < 1 or self.gen_length < 1:
            raise ValueError(f"steps and gen_length must be >= 1, got {self.steps}, {self.gen_length}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0 <= self.truncate_steps <= self.steps:
            raise ValueError(f"truncate_steps must be in [0, steps={self.steps}], got {self.truncate_steps}")
        bl = self.resolved_block_length(spec)
        if self.gen_length % bl:
            raise ValueError(f"gen_length {self.gen_length} must be a multiple of block_length {bl}")
        if self.steps % (self.gen_length // bl):
            raise ValueError(f"steps {self.steps} must be a multiple of the number of blocks {self.gen_length // bl}")


@dataclass
class RelaxedSample:
    """What `relaxed_sample` returns.

    tokens: [B, L] the hard sample (argmax of the final state over non-mask tokens).
    probs:  [B, L, V] straight-through: value one-hot(tokens), gradient of the relaxed final state.
    soft:   [B, L, V] the relaxed final state with the [MASK] column dropped (its value).
    kl:     [B] sum over the relaxed steps of the exact per-step KL to the reference (0 without one).
    states: [steps + 1] hard token states x_T .. x_0 ([B, L] each) when `record_states`; a relaxed
            state is recorded as its argmax (mask included).
    """

    tokens: torch.Tensor
    probs: torch.Tensor
    soft: torch.Tensor
    kl: torch.Tensor
    states: list[torch.Tensor] | None = None


# positions of the full sequence [B, P+L] per attention kind: (valid [B, T], prompt_len [B], spec) -> [B, T]
POSITIONS: Registry[Callable[[torch.Tensor, torch.Tensor, DiffusionSpec], torch.Tensor]] = Registry(
    "relaxed-sampler positions"
)
POSITIONS.register("full", lambda valid, prompt_len, spec: (valid.long().cumsum(-1) - 1).clamp(min=0))
POSITIONS.register(
    "block", lambda valid, prompt_len, spec: response_aligned_positions(valid, prompt_len, spec.block_size)
)


def _uniform(shape: tuple[int, ...], generators: Generators, device: torch.device) -> torch.Tensor:
    """float64 U(0, 1) noise `[B, ...]`; one generator per row (row noise independent of batching)
    or one for the batch."""
    if generators is None or isinstance(generators, torch.Generator):
        u = torch.rand(shape, dtype=torch.float64, generator=generators)
    else:
        if len(generators) != shape[0]:
            raise ValueError(f"got {len(generators)} generators for {shape[0]} rows")
        u = torch.stack([torch.rand(shape[1:], dtype=torch.float64, generator=g) for g in generators])
    # keep u strictly inside (0, 1): -log(-log u) is then finite
    return u.clamp_(torch.finfo(torch.float64).tiny, 1.0 - 2**-53).to(device)


def _token_log_probs(model: nn.Module, embeds: torch.Tensor, ctx: _Context) -> torch.Tensor:
    """log p_theta(x_0^i = v | x_t) `[B, L, V]` float32 over the response, [MASK] excluded."""
    out = model(inputs_embeds=embeds, attention_mask=ctx.valid, position_ids=ctx.positions).logits  # [B, T, V']
    logits = aligned_logits(out, ctx.spec)[:, ctx.P :, : ctx.mask_col.shape[0]].float()  # [B, L, V]
    logits = logits.masked_fill(ctx.mask_col, float("-inf"))
    return logits.log_softmax(-1)


@dataclass
class _Context:
    spec: DiffusionSpec
    P: int
    valid: torch.Tensor  # [B, T] bool
    positions: torch.Tensor  # [B, T]
    prompt_ids: torch.Tensor  # [B, P]
    mask_col: torch.Tensor  # [V] bool, True at the [MASK] id


def _embed(model: nn.Module, ctx: _Context, state: torch.Tensor) -> torch.Tensor:
    """inputs_embeds `[B, T, d]`: the prompt's embeddings, then the soft state `[B, L, V]` @ E `[V, d]`."""
    E = model.get_input_embeddings().weight  # [V', d]
    V = state.shape[-1]
    if E.shape[0] < V:
        raise ValueError(f"the model's embedding matrix has {E.shape[0]} rows, fewer than the vocabulary {V}")
    response = state.to(E.dtype) @ E[:V]  # [B, L, V] @ [V, d] -> [B, L, d]
    return torch.cat([E[ctx.prompt_ids], response], dim=1)


def _transition_log_q(logp: torch.Tensor, r: float, mask_id: int) -> torch.Tensor:
    """log q(x_s | x_t) `[B, Lb, V]` float64 of a masked position: log(r p_theta) for tokens, log(1 - r) at [MASK]."""
    log_q = logp.double() + torch.log(torch.tensor(r, dtype=torch.float64))
    stay = torch.log(torch.tensor(1.0 - r, dtype=torch.float64)) if r < 1.0 else torch.tensor(float("-inf"))
    log_q = log_q.clone()
    log_q[..., mask_id] = stay.to(log_q)
    return log_q


def _perturbed_log_q(logp: torch.Tensor, u: torch.Tensor, r: float, mask_col: torch.Tensor) -> torch.Tensor:
    """log q(x_s | x_t) + G `[B, Lb, V]` float32 for the relaxed draw: the Gumbel noise
    G = -log(-log u) and the constant offsets (log r on tokens, log(1 - r) at [MASK]) are computed
    in float64 without gradient, then added to the float32 log-probabilities. Only float32
    `[B, Lb, V]` tensors enter the autograd graph (the float64 version kept ~3 of them per
    relaxed step); the exact categorical draws of the hard steps stay float64 (`_transition_log_q`)."""
    offset = torch.where(
        mask_col,
        torch.tensor(math.log1p(-r) if r < 1.0 else float("-inf"), dtype=torch.float64),
        torch.tensor(math.log(r), dtype=torch.float64),
    ).to(u.device)  # [V]
    noise = (offset - torch.log(-torch.log(u))).float()  # [B, Lb, V], -inf at [MASK] when r = 1
    # [MASK] is -inf in logp: its column is the offset + noise alone (the where's gradient is 0 there)
    return torch.where(mask_col, noise, logp + noise)


def relaxed_sample(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    spec: DiffusionSpec,
    config: RelaxedConfig,
    generators: Generators = None,
    reference: ReferenceFn | None = None,
    vocab_size: int | None = None,
    record_states: bool = False,
) -> RelaxedSample:
    """Run the reverse process from the fully masked response of left-padded prompts.

    Args:
        model: the policy (a dare model or its PEFT wrapper); called with `inputs_embeds`.
        prompt_ids: [B, P] left-padded prompts; prompt_mask: [B, P] (1 = real token).
        spec: the model's DiffusionSpec (mask id, logits shift, attention kind).
        config: steps, gen_length, block_length, tau, truncate_steps.
        generators: one torch.Generator per row (or one for the batch); all noise is float64.
        reference: a context-manager factory yielding the reference model, entered around each
            reference forward only (a LoRA reference is the policy with its adapter disabled, so
            it must not stay disabled for the policy's forwards). None = no KL.
        vocab_size: V of the states (default: the model's output size).
        record_states: also return every intermediate state (tests, debugging).
    """
    config.validate(spec)
    device = prompt_ids.device
    B, P = prompt_ids.shape
    L = config.gen_length
    mask_id = spec.mask_token_id
    valid = torch.cat([prompt_mask.bool(), torch.ones(B, L, dtype=torch.bool, device=device)], dim=1)  # [B, T]
    prompt_len = prompt_mask.long().sum(-1)
    positions = POSITIONS.get(spec.attention)(valid, prompt_len, spec)
    ctx = _Context(spec, P, valid, positions, prompt_ids, torch.zeros(0, dtype=torch.bool, device=device))

    bl = config.resolved_block_length(spec)
    num_blocks = L // bl
    steps_per_block = config.steps // num_blocks
    first_relaxed = config.steps - config.truncate_steps  # global index of the first relaxed step

    tokens = torch.full((B, L), mask_id, dtype=torch.long, device=device)  # hard state while not relaxed
    state: torch.Tensor | None = None  # [B, L, V] soft state once relaxed
    kl = torch.zeros(B, device=device)
    V = vocab_size or model.config.vocab_size
    ctx.mask_col = torch.zeros(V, dtype=torch.bool, device=device)
    ctx.mask_col[mask_id] = True
    states = [tokens.clone()] if record_states else None

    for k in range(config.steps):
        block, j = divmod(k, steps_per_block)
        lo, hi = block * bl, (block + 1) * bl
        t = 1.0 - j / steps_per_block
        s = 1.0 - (j + 1) / steps_per_block
        r = (t - s) / t  # reveal probability of a masked position

        if k < first_relaxed:  # hard ancestral step, no graph kept
            with torch.no_grad():
                ids = torch.cat([prompt_ids, tokens], dim=1)
                out = model(input_ids=ids, attention_mask=valid, position_ids=positions).logits
                logits = aligned_logits(out, spec)[:, P:, :V].float()  # [B, L, V]
                logits = logits.masked_fill(ctx.mask_col, float("-inf"))
                log_q = _transition_log_q(logits[:, lo:hi].log_softmax(-1), r, mask_id)  # [B, Lb, V]
                u = _uniform(tuple(log_q.shape), generators, device)
                draw = gumbel_argmax_from_uniform(log_q, u, 1.0)  # Gumbel-max: exact categorical
                blk = tokens[:, lo:hi]
                tokens[:, lo:hi] = torch.where(blk == mask_id, draw, blk)
            if record_states:
                states.append(tokens.clone())
            continue

        if state is None:  # entering the relaxed phase
            state = F.one_hot(tokens, V).float()  # [B, L, V]

        logp = _token_log_probs(model, _embed(model, ctx, state), ctx)  # [B, L, V]
        logp_blk = logp[:, lo:hi]
        u = _uniform(tuple(logp_blk.shape), generators, device)
        perturbed = _perturbed_log_q(logp_blk, u, r, ctx.mask_col)  # [B, Lb, V] float32, noise drawn in float64
        relaxed = (perturbed / config.tau).softmax(-1)  # [B, Lb, V] float32
        masked_mass = state[:, lo:hi, mask_id : mask_id + 1]  # [B, Lb, 1]: x_t^i[MASK]
        new_blk = (1.0 - masked_mass) * state[:, lo:hi] + masked_mass * relaxed  # c x_t + (1 - c) x~

        if reference is not None:
            with reference() as ref:
                ref_logp = _token_log_probs(ref, _embed(ref, ctx, state), ctx)[:, lo:hi]  # [B, Lb, V]
            # the [MASK] column is -inf under both: zero it before the difference (0 * nan has a nan gradient)
            diff = logp_blk.masked_fill(ctx.mask_col, 0.0) - ref_logp.masked_fill(ctx.mask_col, 0.0)
            per_pos = (logp_blk.exp() * diff).sum(-1)  # [B, Lb]: KL(p_theta^i || p_ref^i)
            kl = kl + r * (masked_mass.squeeze(-1) * per_pos).sum(-1)

        if config.straight_through:  # value: the Gumbel-max draw (mask column included); gradient: relaxed
            new_blk = F.one_hot(new_blk.detach().argmax(-1), V).to(new_blk.dtype) + (new_blk - new_blk.detach())
        state = torch.cat([state[:, :lo], new_blk, state[:, hi:]], dim=1)
        if record_states:
            states.append(state.argmax(-1))

    if state is None:  # nothing relaxed: a plain hard sample
        state = F.one_hot(tokens, V).float()
    soft = state.masked_fill(ctx.mask_col, 0.0)  # [B, L, V], the [MASK] column dropped
    hard_tokens = soft.detach().argmax(-1)  # [B, L]
    onehot = F.one_hot(hard_tokens, V).to(soft.dtype)
    probs = onehot + (soft - soft.detach())  # straight-through
    return RelaxedSample(tokens=hard_tokens, probs=probs, soft=soft, kl=kl, states=states)


__all__ = ["POSITIONS", "RelaxedConfig", "RelaxedSample", "relaxed_sample"]
