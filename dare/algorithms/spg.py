"""SPG: Sandwiched Policy Gradient (Wang et al., arXiv 2510.09541; facebookresearch/SPG
`spg/spg_trainer.py`; settings from yjyddq/DARE `verl/workers/actor/llada_dp_actor_spg.py`,
`verl/trainer/ppo/dllm_core_algos.py::compute_policy_loss_spg`).

The policy-gradient objective sum_i A_i log pi(y_i) needs log pi, which a masked diffusion LM
cannot compute. SPG replaces it by a bound chosen by the advantage's sign, so the surrogate is a
lower bound of the true objective ("sandwiched"):

    J = sum_i A_i * ( ELBO(y_i)  if A_i > 0  else  EUBO(y_i) )           (paper §3, Eq. 6-7)

Both bounds are written per token (divided by the response length n, as SPG's code does) from
the same K masked views z_k of the response, each view masking a set M_k (|M_k| = l_k), with
empirical masked fraction t_k = l_k / n:

    lower = sum_k pi_k (1/l_k) sum_{i in M_k} log p(y^i | z_k)                    (ELBO / n)
    upper = mean_{i masked in some view} (1/beta) log sum_k pi_k 1[i in M_k] p(y^i | z_k)^beta / t_k
                                                                                  (EUBO / n, Renyi form)
    mix   = omega * upper + (1 - omega) * lower                                   (SPG's "mix", omega 0.5)

with pi_k the views' weights (1/K for a Monte-Carlo average). Loss (`spg_loss`):
L = -sum_i n_i A_i s_i / sum_i n_i, with s_i = lower if A_i > 0 else the upper (or mix) value,
A = r - mean_group(r) (`grpo_mean`), no ratio, no clipping, no KL (SPG refuses a KL term: the
reference estimate would depend on the advantage's sign).

What the bounds guarantee (`tests/algorithms/test_spg.py`, exact enumeration on a table model;
docs/algorithms/spg.md): n * lower (in expectation over the views, l ~ U{1..n}) is the masked
diffusion ELBO, <= log p(y) by Jensen over decoding orders. n * upper in expectation is, token by
token, the beta-norm of p(y^i | context) over the uniform-order context, and Hoelder's
inequality makes it >= log p(y) for every beta >= n. For beta < n (SPG uses 1.5 with n = 256)
it is a surrogate, not a guaranteed bound: the enumeration finds sequences where it falls below
log p(y). The paper's own statement of the bound's range of beta is unverified here.

SPG's block-random masking plan (one random block partially masked, earlier blocks clean,
later blocks fully masked) is not implemented; dare draws the views with the stratified ELBO
plan (`dare.diffusion.elbo.ElboEstimator`).

Shapes: B batch, K views, L length.
"""

from __future__ import annotations

import torch


def _view_weights(view_probs: torch.Tensor | None, B: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """`[B, K]` weights of the views: given, or 1/K (a Monte-Carlo average)."""
    if view_probs is None:
        return torch.full((B, K), 1.0 / K, dtype=like.dtype, device=like.device)
    return view_probs.to(like.dtype).expand(B, K)


def spg_lower_bound(
    logp: torch.Tensor, view_masks: torch.Tensor, response_mask: torch.Tensor, view_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """SPG's per-token ELBO, `[B]`: sum_k pi_k * mean_{i in M_k} log p(y^i | z_k).

    Args:
        logp: `[B, K, L]` log p(y^i | view k) (any value where not masked).
        view_masks: `[B, K, L]` bool, the positions masked in view k.
        response_mask: `[B, L]` bool, the response tokens.
        view_probs: `[B, K]` (or `[K]`) weights of the views; None: 1/K each.
    """
    B, K, _ = logp.shape
    m = (view_masks & response_mask[:, None]).to(logp.dtype)  # [B, K, L]
    per_view = (logp * m).sum(-1) / m.sum(-1).clamp(min=1)  # [B, K], mean over the view's masked tokens
    return (_view_weights(view_probs, B, K, logp) * per_view).sum(-1)  # [B, K] -> [B]


def spg_upper_bound(
    logp: torch.Tensor,
    view_masks: torch.Tensor,
    response_mask: torch.Tensor,
    beta: float,
    view_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """SPG's per-token EUBO (Renyi form), `[B]`:
    mean_i (1/beta) log sum_k pi_k 1[i in M_k] p(y^i | z_k)^beta / t_k, with t_k = |M_k| / n.

    Tokens masked in no view carry no estimate and are left out of the mean (as SPG's code).
    The power is taken in log space (logsumexp), so small probabilities do not underflow.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    B, K, L = logp.shape
    resp = response_mask[:, None]  # [B, 1, L]
    m = view_masks & resp  # [B, K, L]
    n = response_mask.sum(-1).to(logp.dtype)  # [B]
    t = m.sum(-1).to(logp.dtype) / n.clamp(min=1)[:, None]  # [B, K], empirical masked fraction
    log_w = (_view_weights(view_probs, B, K, logp) / t.clamp(min=1e-12)).log()  # [B, K], log(pi_k / t_k)
    terms = torch.where(m, beta * logp + log_w[..., None], torch.full_like(logp, -torch.inf))  # [B, K, L]
    per_token = torch.logsumexp(terms, dim=1) / beta  # [B, K, L] -> [B, L], -inf where never masked
    seen = m.any(1)  # [B, L]
    per_token = torch.where(seen, per_token, torch.zeros_like(per_token))
    return per_token.sum(-1) / seen.sum(-1).clamp(min=1).to(logp.dtype)  # [B]


def spg_sandwich(lower: torch.Tensor, upper: torch.Tensor, advantages: torch.Tensor, mix: float = 0.5) -> torch.Tensor:
    """The log-likelihood surrogate of each sequence, `[B]`: the lower bound where A > 0, else
    mix * upper + (1 - mix) * lower (mix = 1: the pure upper bound, SPG's "eubo"; 0: "elbo")."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    return torch.where(advantages > 0, lower, mix * upper + (1.0 - mix) * lower)


def spg_loss(
    surrogate: torch.Tensor, advantages: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = -sum_i n_i A_i s_i / sum_i n_i (length-weighted, as SPG's token-mean).

    Args:
        surrogate: `[B]` per-token log-likelihood surrogates s_i (`spg_sandwich`).
        advantages: `[B]` sequence advantages.
        lengths: `[B]` response lengths n_i.
    """
    w = lengths.to(surrogate.dtype)  # [B]
    loss = -(w * advantages.to(surrogate.dtype) * surrogate).sum() / w.sum().clamp(min=1)
    pos = advantages > 0
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/spg_pos_frac": float(pos.float().mean()),
        "actor/spg_surrogate_mean": float(surrogate.detach().mean()),
    }
    return loss, metrics


__all__ = ["spg_loss", "spg_lower_bound", "spg_sandwich", "spg_upper_bound"]
