"""The likelihood of a few-step decoding trajectory (DiDi-Instruct's student, Zheng et al., arXiv
2509.25035): log p(x) = the sum over steps of the log-probabilities of the tokens each step drew,
given the state that step saw. Pure tensor math over a model's aligned logits; the sampler that
draws a trajectory is `dare.sampling.few_step`.

Shapes: N rows, P padded prompt length, L response length, V vocabulary, S steps.
"""

from __future__ import annotations

import math

import torch

from dare.diffusion.estimators import VIEW_FORWARDS, ViewInputs
from dare.models.spec import DiffusionSpec, aligned_logits


def response_logits(
    model: torch.nn.Module,
    spec: DiffusionSpec,
    x: torch.Tensor,
    valid: torch.Tensor | None,
    P: int,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Aligned logits of the response columns: x `[N, P+L]` -> `[N, L, V]`. `valid`: the 2-D padding
    mask, None (no padding) or, with `positions`, a full mask (`dare.models.layers.full_attention_mask`)."""
    out = model(x, attention_mask=valid, position_ids=positions)
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


def trajectory_states(response: torch.Tensor, step_of: torch.Tensor, num_steps: int, mask_id: int) -> torch.Tensor:
    """The state each step saw: state j masks every position with `step_of >= j`.
    `[N, L]` -> `[S, N, L]`."""
    j = torch.arange(num_steps, device=response.device)[:, None, None]
    return torch.where(step_of[None] >= j, mask_id, response[None])


def trajectory_token_logp(
    model: torch.nn.Module,
    spec: DiffusionSpec,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response: torch.Tensor,
    step_of: torch.Tensor,
    num_steps: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(token i | state step_of[i]) per response token, with gradients: `[N, L]`, 0 where
    `step_of` is outside [0, num_steps) (never drawn, e.g. after the first end id).

    The trajectory replay of CJ-GRPO and TraceRL: token i is scored in the state the sampler saw
    when it committed i (every position with `step_of >= step_of[i]` masked). One batched forward
    over the S states of every row (`[S*N, P+L]`).
    """
    N, P = input_ids.shape
    L = response.shape[1]
    states = trajectory_states(response, step_of, num_steps, spec.mask_token_id)  # [S, N, L]
    x = torch.cat([input_ids.expand(num_steps, N, P), states], -1).reshape(num_steps * N, P + L)
    valid = torch.cat([attention_mask.bool(), torch.ones(N, L, dtype=torch.bool, device=x.device)], 1)
    # the attention kind's forward (block models: the state as the noisy half of [x_t ; x_0] and as
    # its own context, so a token sees its own block's state and the earlier blocks as they stood in
    # that state: committed blocks, and a decoding block's earlier model blocks still partly masked)
    prompt_len = attention_mask.long().sum(-1).repeat(num_steps)  # [S*N]
    views = ViewInputs(x, x, valid.repeat(num_steps, 1), prompt_len)
    logits = VIEW_FORWARDS.get(spec.attention)(model, views, spec)[:, P:]  # [S*N, L, V]
    lp = tempered_log_probs(logits, spec, temperature)  # [S*N, L, V]
    tok = response.repeat(num_steps, 1)  # [S*N, L]
    lp = lp.gather(-1, tok[..., None])[..., 0].view(num_steps, N, L)
    drawn = step_of[None] == torch.arange(num_steps, device=x.device)[:, None, None]  # [S, N, L]
    return torch.where(drawn, lp, 0.0).sum(0)  # [N, L]: each token is drawn at one step at most


def per_step_logp(token_logp: torch.Tensor, step_of: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Token log-probs `[N, L]` (`trajectory_token_logp`) summed per decoding step: log p(tokens
    drawn at step j | state j), `[N, S]`."""
    drawn = step_of[:, None] == torch.arange(num_steps, device=token_logp.device)[None, :, None]  # [N, S, L]
    return torch.where(drawn, token_logp[:, None], 0.0).sum(-1)  # [N, S]


__all__ = ["response_logits", "tempered_log_probs", "per_step_logp", "trajectory_states", "trajectory_token_logp"]
