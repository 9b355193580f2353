"""SPG's bounds and loss: a hand-computed case, the sandwich on a model small enough to
enumerate (lower <= exact log-likelihood <= upper), and the loss's gradient."""

import math

import pytest
import torch
from enumerable_mdm import TableMDM  # noqa: I001  (tests/algorithms is on sys.path)

from dare.algorithms.spg import spg_loss, spg_lower_bound, spg_sandwich, spg_upper_bound


def test_bounds_by_hand():
    # one sequence of 3 response tokens (+1 prompt position), two views
    p = torch.tensor([[[0.9, 0.5, 0.2, 0.4], [0.9, 0.8, 0.1, 0.4]]], dtype=torch.float64)  # [1, 2, 4]
    masks = torch.tensor([[[False, True, False, False], [False, True, True, True]]])
    resp = torch.tensor([[False, True, True, True]])
    lower = spg_lower_bound(p.log(), masks, resp)
    # view 0: mean log over {0.5}; view 1: mean over {0.8, 0.1, 0.4}; averaged over views
    want = 0.5 * (math.log(0.5) + (math.log(0.8) + math.log(0.1) + math.log(0.4)) / 3)
    assert float(lower) == pytest.approx(want, rel=1e-12)
    beta = 2.0
    upper = spg_upper_bound(p.log(), masks, resp, beta)
    # t_0 = 1/3, t_1 = 1; token 1 in both views, tokens 2, 3 only in view 1
    tok1 = math.log(0.5 * 0.5**2 / (1 / 3) + 0.5 * 0.8**2 / 1) / beta
    tok2 = math.log(0.5 * 0.1**2) / beta
    tok3 = math.log(0.5 * 0.4**2) / beta
    assert float(upper) == pytest.approx((tok1 + tok2 + tok3) / 3, rel=1e-12)
    # a token masked in no view is left out of the upper bound's mean
    only0 = spg_upper_bound(p.log()[:, :1], masks[:, :1], resp, beta)
    assert float(only0) == pytest.approx(math.log(0.5**2 / (1 / 3)) / beta, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_sandwich_the_exact_log_likelihood(seed):
    """Exact expectations over every mask (l ~ U{1..n}, uniform subsets): n * lower is the ELBO
    and n * upper with beta >= n is an upper bound (Hoelder); both bracket log p(y), computed by
    enumerating every decoding order, for every sequence."""
    model = TableMDM(n=3, V=2, seed=seed)
    masks, probs = model.all_masks()  # [M, n], [M]
    resp = torch.ones(1, model.n, dtype=torch.bool)
    total = 0.0
    for y in model.sequences():
        logp = model.token_logp(y, masks)[None]  # [1, M, n]
        exact = model.exact_logp(y)
        total += math.exp(exact)
        lower = model.n * float(spg_lower_bound(logp, masks[None], resp, probs))
        for beta in (3.0, 4.0, 8.0):
            upper = model.n * float(spg_upper_bound(logp, masks[None], resp, beta, probs))
            assert lower <= exact + 1e-12 <= upper + 2e-12, (y.tolist(), beta, lower, exact, upper)
        # the bound loosens as beta grows (power means increase with the power)
        u3, u8 = (float(spg_upper_bound(logp, masks[None], resp, b, probs)) for b in (3.0, 8.0))
        assert u3 <= u8 + 1e-12
    assert total == pytest.approx(1.0, abs=1e-12)  # the enumerated likelihoods are a distribution


def test_upper_bound_below_n_is_not_guaranteed():
    """beta < n is a surrogate (SPG uses 1.5): the enumeration finds sequences it undershoots."""
    model = TableMDM(n=3, V=2, seed=0)
    masks, probs = model.all_masks()
    resp = torch.ones(1, model.n, dtype=torch.bool)
    below = 0
    for y in model.sequences():
        logp = model.token_logp(y, masks)[None]
        upper = model.n * float(spg_upper_bound(logp, masks[None], resp, 1.0, probs))
        below += upper < model.exact_logp(y)
    assert below > 0


def test_sandwich_selects_by_advantage_sign_and_loss_by_hand():
    lower = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    upper = torch.tensor([-0.5, -1.0, -1.5], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.0])
    s = spg_sandwich(lower, upper, adv, mix=0.5)
    torch.testing.assert_close(s, torch.tensor([-1.0, -1.5, -2.25]))
    torch.testing.assert_close(spg_sandwich(lower, upper, adv, mix=1.0), torch.tensor([-1.0, -1.0, -1.5]))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)  # lengths 2, 4, 2
    loss, metrics = spg_loss(None, s[:, None].expand(-1, 4), adv[:, None].expand(-1, 4), mask)
    # -(2 * 1 * -1 + 4 * -1 * -1.5 + 0) / 8
    assert float(loss.detach()) == pytest.approx(-(2 * -1.0 + 4 * 1.5) / 8)
    assert metrics["actor/spg_pos_frac"] == pytest.approx(2 / 8)  # of the response tokens
    loss.backward()
    # positive advantage pushes the lower bound up, negative pushes the mix (both bounds) down
    torch.testing.assert_close(lower.grad, torch.tensor([-2 / 8, 0.5 * 4 / 8, 0.0]))
    torch.testing.assert_close(upper.grad, torch.tensor([0.0, 0.5 * 4 / 8, 0.0]))


def test_bad_arguments_are_refused():
    x = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="beta must be > 0"):
        spg_upper_bound(x, x.bool(), x[:, 0].bool(), 0.0)
    with pytest.raises(ValueError, match=r"mix must be in \[0, 1\]"):
        spg_sandwich(x[0, 0], x[0, 0], x[0, 0], mix=2.0)


# ---------------------------------------------------------------------------------------------
# The registered algorithm
# ---------------------------------------------------------------------------------------------


def test_algorithm_loss_is_the_sandwich_of_its_views():
    from rl_utils import ADV, V, make_algorithm, toy_batch

    from dare.diffusion.estimators import NoisePlan, view_logp
    from dare.models import tiny

    model = tiny("llada", V).eval()
    algo = make_algorithm("spg", model, num_t=3, mu=2)
    batch, adv = toy_batch(P=4, L=5), ADV
    resp = batch["response_mask"]
    updates = algo.prepare(model, None, batch)
    assert len(updates) == 2 and "old_log_prob" not in updates[0]
    assert not torch.equal(updates[0]["plan.view_masks"], updates[1]["plan.view_masks"])
    loss, metrics = algo.compute_loss(model, updates[0])
    plan = NoisePlan.from_tensors(updates[0], "plan.")
    lp = view_logp(model, batch, plan)
    s = spg_sandwich(spg_lower_bound(lp, plan.view_masks, resp), spg_upper_bound(lp, plan.view_masks, resp, 1.5), adv)
    assert float(loss.detach()) == pytest.approx(float(-(adv * s).mean().detach()), rel=1e-5)  # equal lengths
    assert metrics["actor/spg_pos_frac"] == 0.5


def test_spg_args_are_validated():
    from dare.config import RecipeError
    from dare.config.schema import build_stage

    with pytest.raises(RecipeError, match=r"stages\[0\].beta: must be 0: SPG has no KL"):
        build_stage({"algorithm": "spg", "steps": 1, "beta": 0.1}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].mix"):
        build_stage({"algorithm": "spg", "steps": 1, "mix": 1.5}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].views: estimator 'd1' computes \['logp'\]"):
        build_stage({"algorithm": "spg", "steps": 1, "views": "d1"}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"views 'spg_bounds' does not use \['p_mask_prompt'\]"):
        build_stage({"algorithm": "spg", "steps": 1, "views": "spg_bounds"}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].views: need 0 <= min_t <= max_t <= 1"):
        build_stage({"algorithm": "spg", "steps": 1, "min_t": 0.9, "max_t": 0.1}, "stages[0]", None)
    stage = build_stage({"algorithm": "spg", "steps": 1, "views": "spg_bounds", "p_mask_prompt": 0}, "s", None)
    assert stage.args.views == "spg_bounds"


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_spg_raises_the_reward_of_a_tiny_model(family):
    from rl_utils import rl_learning_run

    rewards = rl_learning_run("spg", family, steps=10)  # ~5 s
    assert rewards[0] < 0.45  # a random model: about a third of its tokens in the target set
    assert sum(rewards[-3:]) / 3 > 0.75, rewards


def test_block_random_views():
    """SPG's views: per view one block of the completion is partially masked (m in the allowed
    range), earlier blocks are clean, later ones fully masked; the prompt is masked at its rate."""
    from rl_utils import toy_batch

    from dare.algorithms.spg import SPGBlockEstimator

    batch = toy_batch(P=6, L=10)
    batch["response_mask"][1, -3:] = False  # a response ending early: its tail is still completion
    est = SPGBlockEstimator(SPGBlockEstimator.Args(num_samples=64, block_length=4, min_t=0.5, max_t=1.0))
    plan = est.sample(batch, torch.Generator().manual_seed(0))
    views = plan.view_masks[:, :, 6:]  # [B, K, 10], the completion (blocks of 4, 4, 2)
    assert not plan.view_masks[:, :, :6].any()  # the prompt is masked through prompt_mask only
    blocks = [(0, 4), (4, 8), (8, 10)]
    seen = set()
    for b in range(4):
        for k in range(64):
            v = views[b, k]
            partial = [i for i, (s, e) in enumerate(blocks) if 0 < int(v[s:e].sum()) < e - s]
            full = [i for i, (s, e) in enumerate(blocks) if bool(v[s:e].all())]
            kb = partial[0] if partial else min(full)  # the drawn block (fully masked when m = n_k)
            assert len(partial) <= 1 and all(i > kb for i in full if i != kb)
            assert not any(v[s:e].any() for s, e in blocks[:kb])  # earlier blocks clean
            s, e = blocks[kb]
            assert (e - s) * 0.5 <= int(v[s:e].sum()) <= e - s  # m in [max(1, floor(min_t n_k)), n_k]
            seen.add(kb)
            if b == 1:  # its response ends at completion position 7: the tail is always masked
                assert bool(v[7:].all()) and kb in (0, 1)
    assert seen == {0, 1, 2}
    rate = plan.prompt_mask[:, :6].float().mean()
    assert 0.0 < float(rate) < 0.5  # p_mask_prompt 0.15 over 24 prompt tokens
    assert torch.equal(plan.weights != 0, plan.view_masks & batch["response_mask"][:, None])
