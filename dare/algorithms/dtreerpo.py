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

Wiring (`algorithm: dtreerpo`): the class declares a `RolloutShape` (`TreeRollout`), so the RL
trainer hands it the step's prompts instead of sampling G independent responses. The tree is
grown level by level through the stage's rollout backend (`RolloutBackend.continue_generate`:
dare's sampler continued from each parent's partial response for b_{k-1} - b_k steps of the same
schedule, every child with its own seed); the leaves are scored by the stage's reward functions,
values and local advantages come from the functions below, and every non-root node becomes one
row of the actor's batch (`segment_batch`). `num_generations` is G (DARE's `num_tree_samples`).
With `self_distillation: true` the loss adds lambda_t times the self-distillation term, computed
from the children's own transition log-probs (`sibling_self_distillation`), u the stage's progress.

Families: LLaDA, Dream (full attention) and SDAR (block attention). A segment's log-probs are one
view forward (`view_logp`, `VIEW_FORWARDS` of the model's attention kind) with the parent state as
the noisy view and the child state as the context. Under block attention a token of model block k
then sees the prompt, the child's blocks before k and the parent's state of block k: the state the
SDAR sampler was in at the segment's first step in block k (it never changes a committed block, so
the child's earlier blocks are the ones the sampler decoded block k after). A one-step segment is
thus scored from the logits the sampler drew it from, as under full attention. That holds when a
decoding block is one model block (`block_length` = the model's `block_size`, SDAR's default); with
a decoding block of several model blocks, a token of a later model block is conditioned on the
child's, not the parent's, earlier model blocks of the same decoding block (one view cannot give
those blocks in the parent's state and the blocks after them the child's). The tree rollout
continues partial responses (`continue_generate`), which SDAR's sampler does with `cache: none`.

Shapes: B prompts, N nodes, C children, L length, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dare.algorithms.base import (
    Algorithm,
    ContinueFn,
    RolloutShape,
    ScoreFn,
    ShapedBatch,
    register_algorithm,
)
from dare.algorithms.rollout import RolloutSpec
from dare.diffusion.estimators import NoisePlan, view_logp
from dare.diffusion.rl_losses import k3_kl, masked_mean
from dare.errors import RecipeError, check_fields
from dare.models.spec import DiffusionSpec, ReferenceFn
from dare.sampling.backend import ROLLOUT_BACKENDS, row_seed
from dare.sampling.config import SamplingConfig

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
    parent_ids: torch.Tensor,
    child_ids: torch.Tensor,
    completion: torch.Tensor,
    mask_id: int,
    eos_id: int | Sequence[int],
) -> torch.Tensor:
    """U(n): the completion tokens the transition unmasked, up to the child's first EOS
    (inclusive; `eos_id` one end id or several). `[B, L]` ids and bool completion -> `[B, L]` bool."""
    unmasked = completion & (parent_ids == mask_id) & (child_ids != mask_id)  # [B, L]
    ends = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=child_ids.device)
    is_eos = completion & torch.isin(child_ids, ends)
    # positions after the first EOS of the child (an EOS strictly before them)
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # [B, L]
    return unmasked & ~after


def transition_plan(
    parent_ids: torch.Tensor,
    child_ids: torch.Tensor,
    completion: torch.Tensor,
    mask_id: int,
    eos_id: int | Sequence[int],
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
    step: float, max_steps: float, lambda_max: float, gamma: float, tau_max: float, beta: float
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


def sibling_self_distillation(
    log_prob: torch.Tensor,
    child_ids: torch.Tensor,
    active: torch.Tensor,
    advantages: torch.Tensor,
    group: torch.Tensor,
    tau: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """`self_distillation_loss` on a segment batch, without the parent's full distribution.

    The rows of one sibling group (same `group` id) are the children of one parent and score
    their tokens from the same parent state, so log p_theta(v | x_p)_j for every token v that q_j
    puts mass on is some child's own transition log-prob `log_prob[c, j]`. KL(q_j || p_j) =
    sum_v q_v log q_v - sum_c (w_c / W_j) log_prob[c, j] over the positive children c that unmasked j.

    Args:
        log_prob: `[R, T]` transition log-probs (with grad), valid on `active`.
        child_ids: `[R, T]` the children's tokens; active: `[R, T]` bool U(c).
        advantages: `[R]`; group: `[R]` long, the sibling group of each row (whole groups only).
        tau: tau_t.

    Returns:
        Scalar, the mean over (group, position) pairs with a vote (0 with none).
    """
    R, T = log_prob.shape
    pos = advantages > 0
    key = torch.unique(group, return_inverse=True)[1]  # [R] dense group ids
    G = int(key.max()) + 1 if R else 0
    a = (advantages / tau).masked_fill(~pos, -torch.inf)
    top = torch.full((G,), -torch.inf, dtype=a.dtype, device=a.device).scatter_reduce(0, key, a, "amax")
    e = torch.where(pos, torch.exp(a - top[key]), torch.zeros_like(a))  # softmax over positive siblings
    w = e / torch.zeros(G, dtype=e.dtype, device=e.device).scatter_add(0, key, e)[key].clamp(min=1e-30)
    votes = active & pos[:, None]  # [R, T]
    if not bool(votes.any()):
        return log_prob.sum() * 0.0
    r, j = votes.nonzero(as_tuple=True)  # one vote per (child, position)
    wv = w[r].to(log_prob.dtype)
    pair = torch.unique(key[r] * T + j, return_inverse=True)[1]  # [M] (group, position) pair of each vote
    n_pairs = int(pair.max()) + 1
    total = torch.zeros(n_pairs, dtype=wv.dtype, device=wv.device).scatter_add(0, pair, wv)  # W_j
    # q over the voted tokens of each pair: merge the votes of one (pair, token)
    combo, inv = torch.unique(pair * (int(child_ids.max()) + 1) + child_ids[r, j], return_inverse=True)
    q = torch.zeros(len(combo), dtype=wv.dtype, device=wv.device).scatter_add(0, inv, wv)
    combo_pair = torch.zeros(len(combo), dtype=torch.long, device=wv.device).scatter(0, inv, pair)
    q = q / (total[combo_pair] + eps)
    neg_entropy = torch.zeros(n_pairs, dtype=wv.dtype, device=wv.device).scatter_add(
        0, combo_pair, q * torch.log(q + eps)
    )
    cross = torch.zeros(n_pairs, dtype=log_prob.dtype, device=log_prob.device).scatter_add(
        0, pair, wv / (total[pair] + eps) * log_prob[r, j]
    )
    return (neg_entropy.detach() - cross).mean()


# ---------------------------------------------------------------------------------------------
# The tree rollout and the segment batch
# ---------------------------------------------------------------------------------------------


def grow_tree(
    tree: Tree,
    points: list[int],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    seeds: torch.Tensor,
    gen_length: int,
    mask_id: int,
    continue_fn: ContinueFn,
) -> torch.Tensor:
    """Every node's response state `[B, N, L]`: the root all [MASK], each level-k node its parent's
    state continued for steps [T - b_{k-1}, T - b_k) of the schedule (`points` = b_0 > ... > b_s),
    one `continue_fn` call per level over every prompt's nodes of that level. Node n of prompt b
    draws its noise from seed `row_seed(seeds[b], n)` alone."""
    B, N, T = prompt_ids.shape[0], tree.parent.shape[0], points[0]
    if len(points) != tree.num_levels + 1:
        raise ValueError(f"{len(points)} branch points for a tree of {tree.num_levels} levels")
    states = torch.full((B, N, gen_length), mask_id, dtype=torch.long)
    for k in range(1, tree.num_levels + 1):
        nodes = (tree.level == k).nonzero().squeeze(-1)  # [n_k]
        parents = tree.parent[nodes]  # [n_k]
        n_k = nodes.numel()
        out = continue_fn(
            prompt_ids.repeat_interleave(n_k, 0), prompt_mask.repeat_interleave(n_k, 0),
            states[:, parents].reshape(B * n_k, gen_length),
            torch.tensor([row_seed(int(s), int(n)) for s in seeds.tolist() for n in nodes.tolist()]),
            T - points[k - 1], points[k - 1] - points[k],
        )  # fmt: skip
        states[:, nodes] = out.view(B, n_k, gen_length).cpu()
    return states


def response_mask_of(responses: torch.Tensor, end_ids: Sequence[int]) -> torch.Tensor:
    """`[n, L]` bool: True up to and including each response's first end id (all True without one)."""
    is_end = torch.isin(responses, torch.tensor(list(end_ids)))
    before = (is_end.long().cumsum(-1) - is_end.long()) == 0  # no end id strictly before
    return before


def segment_batch(
    tree: Tree,
    states: torch.Tensor,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    advantages: torch.Tensor,
    mask_id: int,
    end_ids: Sequence[int],
) -> dict[str, torch.Tensor]:
    """The actor's batch: one row per (prompt, non-root node), prompt-major, nodes in tree order.

    `input_ids` `[n, P+L]` is [prompt | the node's state], `parent_input_ids` [prompt | its parent's
    state], `response_mask` the response columns (the completion; the node's state may still hold
    [MASK]), `transition_mask` U(n), `advantages` `[n]` A(n), `group_index` `[n]` the prompt,
    `node_index` / `parent_index` `[n]` the node and its parent (rows with the same prompt and
    parent are a sibling group)."""
    B, N, L = states.shape
    nodes = torch.arange(1, N)
    child = states[:, nodes].reshape(-1, L)  # [B*(N-1), L]
    parent = states[:, tree.parent[nodes]].reshape(-1, L)
    prompts = prompt_ids.repeat_interleave(N - 1, 0)
    pmask = prompt_mask.bool().repeat_interleave(N - 1, 0)
    completion = torch.cat([torch.zeros_like(pmask), torch.ones(len(child), L, dtype=torch.bool)], 1)
    input_ids, parent_ids = torch.cat([prompts, child], 1), torch.cat([prompts, parent], 1)
    return {
        "input_ids": input_ids,
        "parent_input_ids": parent_ids,
        "attention_mask": torch.cat([pmask, torch.ones(len(child), L, dtype=torch.bool)], 1).long(),
        "response_mask": completion,
        "transition_mask": transition_mask(parent_ids, input_ids, completion, mask_id, end_ids),
        "advantages": advantages[:, nodes].reshape(-1).float(),
        "group_index": torch.arange(B).repeat_interleave(N - 1),
        "node_index": nodes.repeat(B),
        "parent_index": tree.parent[nodes].repeat(B),
    }


class TreeRollout(RolloutShape):
    """d-TreeRPO's rollout: grow each prompt's tree, score its leaves, propagate values, take
    local advantages, and return one training row per segment (`segment_batch`)."""

    def __init__(self, tree: Tree, points: list[int], gen_length: int, mask_id: int, end_ids: Sequence[int]) -> None:
        self.tree, self.points, self.gen_length = tree, points, gen_length
        self.mask_id, self.end_ids = mask_id, tuple(end_ids)

    def collect(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        seeds: torch.Tensor,
        continue_fn: ContinueFn,
        score_fn: ScoreFn,
    ) -> ShapedBatch:
        tree, B = self.tree, prompt_ids.shape[0]
        states = grow_tree(
            tree, self.points, prompt_ids, prompt_mask, seeds, self.gen_length, self.mask_id, continue_fn
        )
        leaves = states[:, tree.leaves].reshape(-1, self.gen_length)  # [B * num_leaves, L]
        if bool((leaves == self.mask_id).any()):
            raise RuntimeError("dtreerpo: a leaf of the tree still holds [MASK] after the last branch point")
        rmask = response_mask_of(leaves, self.end_ids)
        nl = tree.leaves.numel()
        scores, reward_metrics = score_fn([i // nl for i in range(B * nl)], leaves, rmask)
        rewards = torch.tensor(scores, dtype=torch.float64).view(B, nl)
        values = propagate_values(tree, rewards)
        adv = local_advantages(tree, values)
        batch = segment_batch(tree, states, prompt_ids, prompt_mask, adv, self.mask_id, self.end_ids)
        metrics = {
            "rollout/response_length": float(rmask.sum(-1).float().mean()),
            "rollout/tree_nodes": float(tree.parent.shape[0]),
            "rollout/segment_tokens": float(batch["transition_mask"].sum(-1).float().mean()),
            "tree/advantage_abs_mean": float(batch["advantages"].abs().mean()),
        }
        return ShapedBatch(batch, rewards.view(-1).float(), metrics, reward_metrics)


# ---------------------------------------------------------------------------------------------
# The registered algorithm
# ---------------------------------------------------------------------------------------------


def segment_plan(batch: dict[str, torch.Tensor], mask_id: int) -> NoisePlan:
    """The one-view plan of a segment batch: the parent's [MASK] positions masked (the view is the
    parent state), weight 1 on U(n) (`transition_plan` from the batch's stored mask)."""
    completion = batch["response_mask"].bool()
    view = completion & (batch["parent_input_ids"] == mask_id)
    weights = batch["transition_mask"].float()
    B = view.shape[0]
    return NoisePlan(torch.zeros_like(completion), view[:, None], weights[:, None], torch.ones(B, device=view.device))


@register_algorithm
class DTreeRPO(Algorithm):
    """d-TreeRPO (see the module docstring): PPO clip per segment with its local advantage."""

    name = "dtreerpo"
    kind = "rl"
    required_batch_keys = (
        "input_ids", "parent_input_ids", "attention_mask", "response_mask", "transition_mask", "advantages",
        "group_index", "node_index", "parent_index",
    )  # fmt: skip

    @dataclass
    class Args(RolloutSpec):
        # G: trees per prompt, the root's children (DARE's num_tree_samples)
        num_generations: int = 4
        # children of every later inner node
        branch_factor: int = 4
        # s: segments from the root to a leaf; branch points b_k = T - floor(k T / s)
        contraction: int = 2
        clip_eps: float = 0.2
        # k3 KL coefficient to the reference (0 = no reference forward)
        beta: float = 0.0
        # self-distillation: lambda_t = lambda_max (e^{gamma u} - 1) / (e^gamma - 1),
        # tau_t = max(tau_max (1 - u)^sd_beta, 1e-6), u = the stage's progress
        self_distillation: bool = False
        sd_lambda_max: float = 3e-3
        sd_gamma: float = 2.0
        sd_tau_max: float = 2.0
        sd_beta: float = 0.7

        def level_widths(self) -> list[int]:
            """Nodes per level below the root, s levels: G, G b, G b^2, ... (s <= steps, checked at
            recipe load, makes the s + 1 branch points distinct)."""
            return [self.num_generations * self.branch_factor**k for k in range(self.contraction)]

        def train_rows_per_prompt(self) -> int:
            """Segments per prompt (the memory plan's training rows)."""
            return sum(self.level_widths())

        def rollout_rows_per_prompt(self) -> int:
            """Rows of the widest sampler call per prompt (the last level's)."""
            return self.level_widths()[-1]

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            checks = {
                "branch_factor": (self.branch_factor >= 1, ">= 1"),
                "contraction": (self.contraction >= 1, ">= 1"),
                "clip_eps": (0 < self.clip_eps < 1, "in (0, 1)"),
                "beta": (self.beta >= 0, ">= 0"),
                "sd_lambda_max": (self.sd_lambda_max >= 0, ">= 0"),
                "sd_gamma": (self.sd_gamma > 0, "> 0"),
                "sd_tau_max": (self.sd_tau_max > 0, "> 0"),
                "sd_beta": (self.sd_beta >= 0, ">= 0"),
            }
            check_fields(self, checks, key, file)
            if self.dynamic_sampling.enabled:
                raise RecipeError(
                    file, f"{key}.dynamic_sampling", "not supported by dtreerpo (its tree has no independent groups)"
                )

    @property
    def updates_per_step(self) -> int:
        return self.args.mu

    @property
    def needs_reference(self) -> bool:
        return self.args.beta > 0

    @classmethod
    def resolved_sampling(cls, args: Any, spec: DiffusionSpec, gen_length: int) -> SamplingConfig:
        return SamplingConfig(**args.rollout_sampling(gen_length)).for_model(spec)

    @classmethod
    def check_fit(cls, args: Any, spec: DiffusionSpec, gen_length: int) -> None:
        from dare.sampling.generate import check_resumable

        config = cls.resolved_sampling(args, spec, gen_length)
        check_resumable(config)  # the tree continues partial responses
        if args.contraction > config.steps:
            raise ValueError(f"contraction={args.contraction} exceeds the sampling's {config.steps} steps")

    @classmethod
    def check_recipe(cls, recipe: Any, stage: Any, key: str, file: Any) -> None:
        args = stage.args
        if args.self_distillation:  # a sibling group must not be split across ranks or micro-batches
            workers = recipe.resources.num_workers
            per_prompt = args.train_rows_per_prompt()
            rows = stage.batch_size * per_prompt
            if stage.batch_size % workers or (rows // workers) % (stage.grad_accum * per_prompt):
                raise RecipeError(
                    file, f"{key}.grad_accum",
                    f"self_distillation needs whole prompts' trees ({per_prompt} segments each) in every "
                    f"micro-batch: batch_size {stage.batch_size} over {workers} workers x grad_accum "
                    f"{stage.grad_accum} does not split into whole prompts",
                )  # fmt: skip
        if not ROLLOUT_BACKENDS.get(stage.args.rollout_backend).resumes_partial:
            raise RecipeError(
                file, f"{key}.rollout_backend",
                f"{stage.args.rollout_backend!r} cannot continue partial responses, which the tree needs; use dare",
            )  # fmt: skip

    @classmethod
    def rollout_shape(cls, args: Any, spec: DiffusionSpec, gen_length: int) -> TreeRollout:
        config = cls.resolved_sampling(args, spec, gen_length)
        points = branch_points(config.steps, args.contraction)
        tree = Tree.build(args.num_generations, args.branch_factor, len(points) - 1)
        return TreeRollout(tree, points, gen_length, spec.mask_token_id, config.end_token_ids(spec))

    def logp(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """logp_i(n) `[B, P+L]` on U(n), 0 elsewhere (one forward of the parent states)."""
        return view_logp(model, batch, segment_plan(batch, self.spec.mask_token_id), self.spec)[:, 0]

    def prepare(
        self, model: torch.nn.Module, reference: ReferenceFn | None, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """mu updates on the same segments; the old (mu > 1) and reference log-probs first."""
        return self.replayed_updates(model, reference, batch, self.logp)

    def compute_loss(self, model, batch):
        lp = self.logp(model, batch)
        active = batch["transition_mask"].bool()
        loss, metrics = tree_segment_loss(
            batch.get("old_log_prob", lp.detach()), lp, batch["advantages"], active,
            self.args.clip_eps, ref_log_prob=batch.get("ref_log_prob"), beta=self.args.beta,
        )  # fmt: skip
        if self.args.self_distillation:
            if "train_progress" not in batch:
                raise KeyError("dtreerpo: self_distillation needs the batch's train_progress (the stage's progress u)")
            a = self.args
            u = float(batch["train_progress"][0])
            lam, tau = self_distillation_schedule(u, 1.0, a.sd_lambda_max, a.sd_gamma, a.sd_tau_max, a.sd_beta)
            group = batch["group_index"] * (int(batch["node_index"].max()) + 1) + batch["parent_index"]
            sd = sibling_self_distillation(lp, batch["input_ids"], active, batch["advantages"], group, tau)
            loss = loss + lam * sd
            metrics.update({"actor/sd_loss": float(sd.detach()), "actor/sd_lambda": lam, "actor/sd_tau": tau})
        return loss, metrics


__all__ = [
    "DTreeRPO",
    "Tree",
    "TreeRollout",
    "branch_points",
    "grow_tree",
    "local_advantages",
    "propagate_values",
    "response_mask_of",
    "segment_batch",
    "segment_plan",
    "sibling_self_distillation",
    "self_distillation_loss",
    "self_distillation_schedule",
    "transition_mask",
    "transition_plan",
    "tree_segment_loss",
]
