"""d-TreeRPO: tree-structured rollouts with step-level advantages for diffusion LMs
(arXiv 2512.09675). The math only: the tree, its value propagation, the local advantages, the
per-transition log-probs, the policy loss and the self-distillation term, as pure tensor functions.

The rollout is a tree over the denoising steps. The root is the all-[MASK] response at step T.
Branch points b_0 = T > b_1 > ... > b_s = 0 come from the contraction factor s,
b_k = T - floor(k T / s). Every node at b_k is denoised for b_k - b_{k+1} steps, G times from the
root (`num_tree_samples`) and `branch_factor` times from every later node. The leaves are complete
responses. The paper's equation numbers were not checked because the PDF is not in dare's sources;
the formulas follow yjyddq/DARE `verl/trainer/ppo/dtreerpo_algos.py`,
`verl/workers/actor/llada_dp_actor_dtreerpo.py` and `verl/workers/rollout/dtreerpo_llada_rollout.py`.

    leaf value        v(leaf) = r(leaf)                                    (verifier reward)
    node value        v(n)    = mean_{c in children(n)} v(c)               (bottom-up)
    local advantage   A(n)    = v(n) - mean_{m in siblings(n), m != n} v(m)     (0 when n has none: A = v)

Each non-root node n with parent p is one training *segment*, the transition x_p -> x_n. Its
log-prob counts the tokens the transition unmasked, given the parent state:

    logp_i(n) = log p_theta(x_n^i | x_p)   for i in U(n) = {i : x_p^i = [MASK], x_n^i != [MASK]}

These tokens are restricted to the child's completion up to its first EOS. The loss is PPO clip
with the segment's advantage, a token mean per segment, then a mean over segments, plus an
optional k3 KL:

    L_pg = -mean_n [ (1/|U(n)|) sum_{i in U(n)} min(r_i A(n), clip(r_i, 1-eps, 1+eps) A(n)) ]

This is `dare_ppo_clip` with `loss_agg_mode="seq-mean-token-mean"` and the response mask set to
U(n), except for one difference: a segment with U(n) empty (it unmasked only tokens after EOS)
counts in the mean over segments, as in DARE. verl's seq-mean-token-mean skips such rows. The self-distillation term pulls the
parent's predictive distribution toward the advantage-weighted token choices of its children
that have A > 0:

    w_c    = softmax_{c : A(c) > 0}(A(c) / tau_t)
    q_j    = sum_c w_c 1[x_c^j = .] / sum_c w_c         over children c that unmasked position j
    L_sd   = lambda_t * mean_{(p, j)} KL(q_j || p_theta(. | x_p)_j)
    lambda_t = lambda_max (e^{gamma u} - 1) / (e^gamma - 1),  tau_t = max(tau_max (1-u)^beta, 1e-6),  u = step / max_steps

Not wired: a d-TreeRPO stage needs a tree rollout, which branches G x branch_factor^(s-1)
partial denoisings from intermediate states and scores the leaves. The RL trainer's rollout
produces G independent responses per prompt, and dare's samplers cannot resume from a partial
state. Both are needed before an `Algorithm` class and a recipe can be written (see
docs/algorithms/dtreerpo.md).

Shapes: B prompts, N nodes, C children, L length, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dare.diffusion.estimators import NoisePlan
from dare.diffusion.rl_losses import k3_kl, masked_mean

# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------


def branch_points(total_steps: int, contraction: int) -> list[int]:
    """b_k = T - floor(k T / s) for k = 0..s, deduplicated, descending (the last is 0)."""
    if total_steps < 1 or contraction < 1:
        raise ValueError(f"need total_steps >= 1 and contraction >= 1, got {total_steps}, {contraction}")
    return sorted({total_steps - (k * total_steps) // contraction for k in range(contraction + 1)}, reverse=True)


@dataclass(frozen=True)
class Tree:
    """The shape of one prompt's tree (the same for every prompt), nodes in breadth-first order.

    Attributes:
        parent: `[N]` long, the parent's index (-1 for the root, node 0).
        level: `[N]` long, 0 for the root, k for nodes at branch point b_k.
        num_levels: s, the number of denoising segments; nodes at level s are the leaves.
    """

    parent: torch.Tensor
    level: torch.Tensor
    num_levels: int

    @classmethod
    def build(cls, num_tree_samples: int, branch_factor: int, num_levels: int) -> Tree:
        """Root with `num_tree_samples` children; every later inner node has `branch_factor`."""
        parent, level, frontier = [-1], [0], [0]
        for k in range(1, num_levels + 1):
            width = num_tree_samples if k == 1 else branch_factor
            nxt = []
            for p in frontier:
                for _ in range(width):
                    nxt.append(len(parent))
                    parent.append(p)
                    level.append(k)
            frontier = nxt
        return cls(torch.tensor(parent), torch.tensor(level), num_levels)

    @property
    def leaves(self) -> torch.Tensor:
        """`[num_leaves]` node indices of the leaves, in node order."""
        return (self.level == self.num_levels).nonzero().squeeze(-1)


def propagate_values(tree: Tree, leaf_rewards: torch.Tensor) -> torch.Tensor:
    """Node values `[B, N]`: rewards at the leaves (`leaf_rewards` `[B, num_leaves]`, in
    `tree.leaves` order), each inner node the mean of its children's values, bottom-up."""
    B, N = leaf_rewards.shape[0], tree.parent.shape[0]
    values = torch.zeros(B, N, dtype=leaf_rewards.dtype, device=leaf_rewards.device)
    values[:, tree.leaves] = leaf_rewards
    for k in range(tree.num_levels - 1, -1, -1):
        for n in (tree.level == k).nonzero().squeeze(-1).tolist():
            values[:, n] = values[:, tree.parent == n].mean(-1)
    return values


def local_advantages(tree: Tree, values: torch.Tensor) -> torch.Tensor:
    """A(n) = v(n) - mean of its siblings' values (excluding n), `[B, N]`; 0 at the root. A node
    without siblings gets A = v (DARE's choice: its sibling mean defaults to 0)."""
    adv = torch.zeros_like(values)
    for n in range(1, tree.parent.shape[0]):
        sib = (tree.parent == tree.parent[n]).nonzero().squeeze(-1)
        sib = sib[sib != n]
        adv[:, n] = values[:, n] - (values[:, sib].mean(-1) if sib.numel() else 0.0)
    return adv


# ---------------------------------------------------------------------------------------------
# Segments: the transition log-probs and the loss
# ---------------------------------------------------------------------------------------------


def transition_mask(
    parent_ids: torch.Tensor, child_ids: torch.Tensor, completion: torch.Tensor, mask_id: int, eos_id: int
) -> torch.Tensor:
    """U(n): the completion tokens the transition unmasked, up to the child's first EOS
    (inclusive). `[B, L]` ids and bool completion -> `[B, L]` bool."""
    unmasked = completion & (parent_ids == mask_id) & (child_ids != mask_id)  # [B, L]
    is_eos = completion & (child_ids == eos_id)
    # positions after the first EOS of the child (an EOS strictly before them)
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # [B, L]
    return unmasked & ~after


def transition_plan(
    parent_ids: torch.Tensor, child_ids: torch.Tensor, completion: torch.Tensor, mask_id: int, eos_id: int
) -> NoisePlan:
    """The estimator plan of a segment batch whose `input_ids` are the CHILD states: one view that
    masks the parent's [MASK] positions (so the view is the parent state x_p), weight 1 on U(n).
    `view_logp` / `LogpEstimator.logp` of this plan is then logp_i(n) on U(n) and 0 elsewhere."""
    view = completion & (parent_ids == mask_id)  # [B, L]
    weights = transition_mask(parent_ids, child_ids, completion, mask_id, eos_id).float()
    B = parent_ids.shape[0]
    return NoisePlan(torch.zeros_like(completion), view[:, None], weights[:, None], torch.ones(B, device=view.device))


def tree_segment_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    active: torch.Tensor,
    clip_eps: float,
    ref_log_prob: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """d-TreeRPO's segment loss: PPO clip with the segment's advantage, a token mean over U(n),
    then a mean over segments; plus beta times the same mean of k3 KL to the reference.

    Args:
        old_log_prob, log_prob: `[B, L]` transition log-probs (old / current policy).
        advantages: `[B]` local advantages A(n) of the segments.
        active: `[B, L]` bool, U(n) (`transition_mask`).
        clip_eps: symmetric clip.
        ref_log_prob: `[B, L]` reference transition log-probs (beta > 0).
    """
    act = active.to(log_prob.dtype)
    n = act.sum(-1).clamp(min=1.0)  # [B], |U(n)|; an empty segment contributes 0 but still counts
    ratio = torch.exp(log_prob - old_log_prob)  # [B, L]
    A = advantages[:, None].to(log_prob.dtype)
    obj = torch.minimum(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)  # [B, L]
    pg = -((obj * act).sum(-1) / n).mean()
    loss = pg
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps) & active
        metrics = {"actor/pg_loss": pg.item(), "actor/pg_clipfrac": masked_mean(clipped.float(), active).item()}
    if ref_log_prob is not None:
        kl = ((k3_kl(log_prob, ref_log_prob) * act).sum(-1) / n).mean()
        metrics["actor/kl"] = kl.item()
        loss = loss + beta * kl
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Self-distillation
# ---------------------------------------------------------------------------------------------


def self_distillation_schedule(
    step: int, max_steps: int, lambda_max: float, gamma: float, tau_max: float, beta: float
) -> tuple[float, float]:
    """(lambda_t, tau_t) at training progress u = step / max_steps (clamped to [0, 1]):
    lambda_t = lambda_max (e^{gamma u} - 1) / (e^gamma - 1), tau_t = max(tau_max (1 - u)^beta, 1e-6)."""
    u = min(1.0, max(0.0, step / max(1, max_steps)))
    lam = lambda_max * math.expm1(gamma * u) / math.expm1(gamma)
    return lam, max(tau_max * (1.0 - u) ** beta, 1e-6)


def self_distillation_loss(
    parent_log_probs: torch.Tensor,
    child_tokens: torch.Tensor,
    active: torch.Tensor,
    advantages: torch.Tensor,
    tau: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """mean over (group, position) pairs of KL(q_j || p_theta(. | x_p)_j), without lambda_t.

    Args:
        parent_log_probs: `[P, L, V]` log p_theta(. | x_p) of each group's parent (requires grad).
        child_tokens: `[P, C, L]` the C children's tokens.
        active: `[P, C, L]` bool, U(c) of each child.
        advantages: `[P, C]` local advantages; only children with A > 0 vote, with weights
            softmax(A / tau) over them.
        tau: the temperature tau_t.

    Returns:
        Scalar loss (0 with no (group, position) pair, i.e. no positive child).
    """
    P, C, L = child_tokens.shape
    V = parent_log_probs.shape[-1]
    pos = advantages > 0  # [P, C]
    w = torch.softmax((advantages / tau).masked_fill(~pos, -torch.inf), dim=-1)  # [P, C]
    w = torch.nan_to_num(w, nan=0.0)  # a group without a positive child
    votes = (active & pos[:, :, None]).float() * w[:, :, None]  # [P, C, L]
    q = torch.zeros(P, L, V, dtype=parent_log_probs.dtype, device=parent_log_probs.device)
    q.scatter_add_(2, child_tokens.transpose(1, 2), votes.transpose(1, 2).to(q.dtype))  # [P, L, V]
    total = q.sum(-1)  # [P, L]
    used = total > 0  # (group, position) pairs with a vote
    if not bool(used.any()):
        return parent_log_probs.sum() * 0.0
    q = q / (total[..., None] + eps)
    kl = (q * (torch.log(q + eps) - parent_log_probs)).sum(-1)  # [P, L], the support-only sum
    return kl[used].mean()


__all__ = [
    "Tree",
    "branch_points",
    "local_advantages",
    "propagate_values",
    "self_distillation_loss",
    "self_distillation_schedule",
    "transition_mask",
    "transition_plan",
    "tree_segment_loss",
]
