"""EBPO (arXiv 2602.08676): the sequence-level clipped loss on a hand-computed case, the
block-stratified corruption, the composite ELBO's defining property (its expectation is the exact
any-order ELBO of every block, which lies below the exact block log-likelihood, on a model small
enough to enumerate), the algorithm as the actor runs it, and a tiny learning run."""

import itertools
import math

import pytest
import torch
from tiny_rl_loop import train

from dare.algorithms import ALGORITHMS
from dare.algorithms.ebpo import (
    EBPOEstimator,
    block_stratified_masks,
    ebpo_policy_loss,
    ebpo_sequence_clip,
    response_block_ids,
)
from dare.config.schema import build_stage
from dare.diffusion.estimators import NoisePlan, view_logp
from dare.diffusion.rl_losses import PPOClipConfig
from dare.diffusion.rl_registry import POLICY_LOSSES
from dare.models import tiny

V = 16


def test_loss_on_a_hand_computed_case():
    # rho = 1.5, 0.5, 1.1, 0.7; A = 1, 1, -1, -1; eps 0.2:
    #   A>0: min(1.5, 1.2) = 1.2 (clipped), min(0.5, 1.2) = 0.5
    #   A<0: max(1.1, 0.8) = 1.1, max(0.7, 0.8) = 0.8 (clipped)
    #   loss = mean(-1.2, -0.5, +1.1, +0.8) = 0.05
    elbo = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7], dtype=torch.float64)).requires_grad_()
    old = torch.zeros(4, dtype=torch.float64)
    A = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    loss, m = ebpo_sequence_clip(old, elbo, A, PPOClipConfig(clip_eps=0.2))
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert m["actor/pg_clipfrac"] == 0.5 and m["actor/pg_clipfrac_lower"] == 0.25
    loss.backward()
    # d/d elbo of -A rho / 4 where unclipped (d rho / d elbo = rho), 0 where clipped
    torch.testing.assert_close(elbo.grad, torch.tensor([0.0, -0.5 / 4, 1.1 / 4, 0.0], dtype=torch.float64))


def test_log_domain_clip_equals_ppo_clip():
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(64, generator=g), torch.randn(64, generator=g)
    A = torch.randn(64, generator=g)
    cfg = PPOClipConfig(clip_eps=0.2, clip_eps_high=0.28)
    loss, _ = ebpo_sequence_clip(old, new, A, cfg)
    r = torch.exp(new - old)
    ppo = torch.maximum(-A * r, -A * r.clamp(0.8, 1.28)).mean()
    assert loss.item() == pytest.approx(ppo.item(), rel=1e-5)
    with pytest.raises(ValueError, match="dual clip"):
        ebpo_sequence_clip(old, new, A, PPOClipConfig(clip_eps=0.2, clip_ratio_c=3.0))


def test_registered_loss_sums_token_estimates_per_sequence():
    # rows: tokens 0.5 + 0.2 (ratio e^0.7 > 1.2, A = 1: clipped at 1.2), tokens -0.1 + 0 (ratio
    # e^-0.1, A = -2: -A max(e^-0.1, 0.8) = 2 e^-0.1), and an empty row (ignored)
    old = torch.zeros(3, 3)
    new = torch.tensor([[0.5, 0.2, 9.0], [-0.1, 0.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([[1.0], [-2.0], [5.0]]) * mask
    entry = POLICY_LOSSES.get("ebpo_sequence_clip")
    assert entry.fn is ebpo_policy_loss
    loss, m = entry.fn(old, new, adv, mask, "token-mean", PPOClipConfig(clip_eps=0.2), None)
    assert loss.item() == pytest.approx((-1.2 + 2 * math.exp(-0.1)) / 2, rel=1e-6)
    assert m["actor/pg_clipfrac"] == 0.5


def test_blocks_are_response_aligned_and_masks_follow_the_level():
    completion = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert response_block_ids(completion, 2).tolist() == [[-1, -1, 0, 0, 1, 1, 2], [-1, 0, 0, 1, 1, 2, 2]]
    assert response_block_ids(completion, None)[0].tolist() == [-1, -1, 0, 0, 0, 0, 0]
    blocks = response_block_ids(completion, 2)[1]  # blocks of 2, 2, 2
    masks, inv_rate, levels = block_stratified_masks(blocks, 4, torch.Generator().manual_seed(3))
    assert levels.shape == (4, 3)
    # the N levels of a block are evenly spaced mod 1 (stratified)
    gaps = torch.diff(torch.sort(levels, 0).values, dim=0)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 0.25))
    for n in range(4):
        for b in range(3):
            inside = blocks == b
            m = min(math.floor(levels[n, b].item() * 2) + 1, 2)
            assert int(masks[n][inside].sum()) == m
            assert torch.all(inv_rate[n][masks[n] & inside] == 2 / m)
    assert not masks[:, blocks < 0].any() and torch.all((inv_rate > 0) == masks)


def one_row(P=3, L=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V - 2, (1, P + L), generator=g)
    rmask = torch.zeros(1, P + L, dtype=torch.bool)
    rmask[:, P:] = True
    return {"input_ids": ids, "attention_mask": torch.ones(1, P + L, dtype=torch.long), "response_mask": rmask}


def logp_masked(model, batch, masked: list[int]) -> torch.Tensor:
    """log p(o_i | view with `masked` positions masked) at those positions `[L]` (0 elsewhere)."""
    L = batch["input_ids"].shape[1]
    view = torch.zeros(1, 1, L, dtype=torch.bool)
    view[0, 0, masked] = True
    plan = NoisePlan(torch.zeros(1, L, dtype=torch.bool), view, view.float(), torch.ones(1))
    with torch.no_grad():
        return view_logp(model, batch, plan)[0, 0]


def exact_block_elbo_and_loglik(model, batch, positions: list[int]) -> tuple[float, float]:
    """For one block (its other positions clean / its earlier blocks clean): the exact expectation
    of EBPO's block term, sum_m 1/m mean_{|M|=m} sum_{i in M} log p(o_i | M masked), and the exact
    log-likelihood of the block under random-order one-token decoding, log mean_sigma prod_k
    p(o_sigma(k) | sigma(>=k) masked)."""
    s = len(positions)
    elbo = 0.0
    for m in range(1, s + 1):
        subsets = list(itertools.combinations(positions, m))
        elbo += sum(float(logp_masked(model, batch, list(M)).sum()) for M in subsets) / len(subsets) / m
    probs = []
    for order in itertools.permutations(positions):
        probs.append(math.exp(sum(float(logp_masked(model, batch, list(order[k:]))[order[k]]) for k in range(s))))
    return elbo, math.log(sum(probs) / len(probs))


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_composite_elbo_is_unbiased_for_the_exact_elbo_which_bounds_the_loglik(family):
    model = tiny(family, V, **({"block_size": 2} if family == "sdar" else {})).eval()
    spec = model.diffusion_spec()
    batch = one_row()
    block = 2 if family == "sdar" else None
    blocks = [[3, 4], [5, 6]] if family == "sdar" else [[3, 4, 5, 6]]
    exact = [exact_block_elbo_and_loglik(model, batch, b) for b in blocks]
    elbo, loglik = sum(e for e, _ in exact), sum(ll for _, ll in exact)
    assert all(e < ll for e, ll in exact)  # the bound holds per block, strictly for a random model
    # N a multiple of every block size: each mask count m is drawn equally often, only the subsets
    # are random; 256 copies of the row in one batch give 256 independent estimates
    est = EBPOEstimator(EBPOEstimator.Args(num_timesteps=4, block_size=block))
    many = {k: v.expand(256, -1) for k, v in batch.items()}
    plan = est.sample(many, torch.Generator().manual_seed(0))
    with torch.no_grad():
        samples = est.logp(model, many, plan, spec).sum(-1).double()  # [256]
    se = samples.std().item() / 16
    assert abs(samples.mean().item() - elbo) < 4 * se + 1e-6, (samples.mean().item(), elbo, se)
    assert elbo < loglik


def algorithm(name, spec, **args):
    stage = build_stage({"kind": "rl", "algorithm": name, "steps": 1, **args}, "stages[0]", None)
    return ALGORITHMS.get(name)(stage.args, spec)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_first_update_has_ratio_one_and_moves_the_model(family):
    model = tiny(family, V).eval()
    batch = {**one_row(P=3, L=8), "advantages": torch.ones(1, 11), "noise_seed": torch.tensor([[5]])}
    batch = {k: v.expand(2, -1) for k, v in batch.items()}
    batch["advantages"] = torch.tensor([[1.0], [-1.0]]) * batch["response_mask"]
    algo = algorithm("ebpo", model.diffusion_spec(), num_timesteps=2)
    assert algo.estimator.args.block_size == (4 if family == "sdar" else None)
    (update,) = algo.prepare(model, None, batch)
    loss, m = algo.compute_loss(model, update)
    assert m["actor/ebpo_log_ratio"] == 0.0 and m["actor/pg_clipfrac"] == 0.0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_args_are_checked():
    from dare.config import RecipeError

    with pytest.raises(RecipeError, match=r"stages\[0\].num_timesteps"):
        build_stage({"kind": "rl", "algorithm": "ebpo", "steps": 1, "num_timesteps": 0}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].clip_ratio_c"):
        build_stage({"kind": "rl", "algorithm": "ebpo", "steps": 1, "clip_ratio_c": 3.0}, "stages[0]", None)


@pytest.mark.parametrize(
    "family, sampling",
    [
        ("llada", {"algorithm": "llada", "gen_length": 4, "steps": 4, "block_length": 4}),
        ("sdar", {"algorithm": "sdar", "gen_length": 8, "steps": 8, "block_length": 4}),
    ],
)
def test_ebpo_learns_a_rewarded_token(family, sampling):
    # measured (seed 0, 6 steps, lr 3e-3, CPU fp32): llada 0.03 -> ~0.9, sdar 0.03 -> ~0.9
    before, after = train("ebpo", family, sampling, steps=6, lr=3e-3, num_timesteps=4)
    assert before < 0.1 and after > 0.5, (before, after)
