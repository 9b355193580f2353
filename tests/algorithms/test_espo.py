"""ESPO: the ELBO estimate's weights by hand and its unbiasedness by enumeration, the plan's
views, and the sequence-level clipped loss and KL by hand."""

import math

import pytest
import torch
from enumerable_mdm import TableMDM  # noqa: I001  (tests/algorithms is on sys.path)

from dare.algorithms.espo import EspoEstimator, espo_kl, espo_policy_loss, espo_weights


def test_weights_by_hand():
    eligible = torch.tensor([[False, True, True, True, True]])
    mask = torch.tensor([[True, True, False, False, False]])  # the prompt position is ignored
    w_m, w_c = espo_weights(mask, eligible)
    # n = 4, k = 1: (n+1)/k = 5 on the masked token, (n+1)/(n-k) = 5/3 on the other three
    torch.testing.assert_close(w_m, torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(w_c, torch.tensor([[0.0, 0.0, 5 / 3, 5 / 3, 5 / 3]], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_both_halves_are_unbiased_for_the_elbo(seed):
    """Exact expectation over k ~ U{0..n} and uniform subsets of size k equals the ELBO (l ~ U{1..n},
    weight n / l), for the masked half, the complementary half and their average."""
    model = TableMDM(n=3, V=2, seed=seed)
    n = model.n
    masks, probs = model.all_masks()  # ELBO's distribution over non-empty masks
    empty = torch.zeros(1, n, dtype=torch.bool)
    every = torch.cat([empty, masks])  # [2^n, n], all subsets
    k = every.sum(-1)
    p_espo = torch.tensor([1 / (n + 1) / math.comb(n, int(c)) for c in k], dtype=torch.float64)
    eligible = torch.ones_like(every)
    w_m, w_c = espo_weights(every, eligible)
    for y in model.sequences():
        lp = model.token_logp(y, masks)  # [M, n]
        elbo = float((probs[:, None] * lp * masks * n / masks.sum(-1, keepdim=True)).sum())
        lp_m = model.token_logp(y, every)  # [2^n, n] views masking `every`
        lp_c = model.token_logp(y, ~every)  # complementary views
        half_m = float((p_espo[:, None] * w_m * lp_m).sum())
        half_c = float((p_espo[:, None] * w_c * lp_c).sum())
        assert half_m == pytest.approx(elbo, rel=1e-12)
        assert half_c == pytest.approx(elbo, rel=1e-12)
        assert elbo <= model.exact_logp(y) + 1e-12


def _batch(B: int = 3, P: int = 3, L: int = 8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (B, P + L), generator=g)
    rmask = torch.zeros(B, P + L, dtype=torch.bool)
    rmask[:, P:] = True
    rmask[1, P + L - 2 :] = False  # a shorter response
    return {"input_ids": ids, "attention_mask": torch.ones(B, P + L, dtype=torch.long), "response_mask": rmask}


def test_plan_views_are_complementary_and_weights_average_to_one():
    batch = _batch()
    resp = batch["response_mask"]
    est = EspoEstimator(EspoEstimator.Args(num_samples=2))
    plan = est.sample(batch, torch.Generator().manual_seed(1))
    B, K, L = plan.view_masks.shape
    assert K == 4 and not plan.prompt_mask.any()
    pairs = plan.view_masks.view(B, 2, 2, L)
    assert torch.equal(pairs[:, :, 0] ^ pairs[:, :, 1], resp[:, None].expand(B, 2, L))  # complements
    assert not (plan.weights[:, :, ~resp.any(0)] != 0).any()  # nothing outside responses
    # unbiased per token: E[sum over views of the weight] = 1 (many draws of one row)
    big = {k: v[:1].expand(4000, -1) for k, v in batch.items()}
    many = EspoEstimator(EspoEstimator.Args(num_samples=1, reduce_var=False)).sample(
        big, torch.Generator().manual_seed(2)
    )
    mean_w = many.weights.sum(1).mean(0)[resp[0]]  # [n]
    torch.testing.assert_close(mean_w, torch.ones_like(mean_w), atol=0.1, rtol=0)


def test_block_plan_draws_per_block():
    batch = _batch(B=2)
    resp = batch["response_mask"]
    plan = EspoEstimator(EspoEstimator.Args(num_samples=1, block_size=4)).sample(
        batch, torch.Generator().manual_seed(3)
    )
    # every block of row 0 is split between the view and its complement, with its own weights
    w = plan.weights[0, 0][resp[0]].view(2, 4)  # [blocks, tokens]
    m = plan.view_masks[0, 0][resp[0]].view(2, 4)
    for b in range(2):
        k = int(m[b].sum())
        want = torch.where(m[b], torch.tensor(5 / max(k, 1) / 2), torch.tensor(0.0))
        torch.testing.assert_close(w[b], want)


def test_policy_loss_and_kl_by_hand():
    from dare.diffusion.rl_losses import PPOClipConfig

    elbo = torch.tensor([-10.0, -20.0], requires_grad=True)
    old = torch.tensor([-12.0, -20.0])
    adv = torch.tensor([1.0, -1.0])
    lengths = torch.tensor([4, 10])
    mask = torch.arange(10)[None, :] < lengths[:, None]  # [2, 10]
    # the per-token terms: the sequence ELBO spread over the response (any split sums the same)
    spread = lambda x: x[:, None] * mask / lengths[:, None]  # noqa: E731
    adv_t = adv[:, None] * mask
    loss, metrics = espo_policy_loss(spread(old), spread(elbo), adv_t, mask, "token-mean", PPOClipConfig(0.2))
    # row 0: rho = e^{2/4} = 1.65 > 1.2 with A > 0: clipped at -1.2, no gradient; row 1: rho = 1
    assert float(loss.detach()) == pytest.approx((-1.2 + 1.0) / 2)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert metrics["actor/ppo_ratio_max"] == pytest.approx(math.exp(0.5), rel=1e-6)
    loss.backward()
    # row 1: d/dELBO [A rho] / 2 = -1 * (1/10) / 2 = -0.05, and the loss is -that
    torch.testing.assert_close(elbo.grad, torch.tensor([0.0, 0.05]))
    kl = espo_kl(torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -21.0]), lengths)
    assert float(kl) == pytest.approx((0.5 * 4 / 4 + 0.5 * 1 / 10) / 2)


def test_algorithm_under_mu_and_reference():
    import contextlib
    import copy

    from rl_utils import ADV, V, make_algorithm, toy_batch

    from dare.models import tiny

    model = tiny("sdar", V).eval()
    ref = copy.deepcopy(model)
    algo = make_algorithm("espo", model, mc_num=2, mu=2, beta=0.01)
    batch, adv = toy_batch(P=3, L=8), ADV
    updates = algo.prepare(model, lambda: contextlib.nullcontext(ref), batch)
    assert updates[0]["plan.view_masks"].shape[1] == 4  # 2 draws x (view, complement)
    for u in updates:
        torch.testing.assert_close(u["old_log_prob"], u["ref_log_prob"])  # same weights, same plan
        loss, metrics = algo.compute_loss(model, u)
        assert metrics["actor/ppo_ratio_mean"] == pytest.approx(1.0)
        assert metrics["actor/kl"] == pytest.approx(0.0, abs=1e-10)
        # on-policy: the loss is -mean_i A_i (ratio 1)
        assert float(loss.detach()) == pytest.approx(float(-adv.mean()), abs=1e-6)


def test_espo_args_are_validated():
    from dare.config import RecipeError
    from dare.config.schema import build_stage

    with pytest.raises(RecipeError, match=r"stages\[0\].clip_ratio_c: must be null"):
        build_stage({"algorithm": "espo", "steps": 1, "clip_ratio_c": 3.0}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].mc_num"):
        build_stage({"algorithm": "espo", "steps": 1, "mc_num": 0}, "stages[0]", None)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_espo_raises_the_reward_of_a_tiny_model(family):
    from rl_utils import rl_learning_run

    rewards = rl_learning_run("espo", family, steps=10)
    assert rewards[0] < 0.45  # a random model: about a third of its tokens in the target set
    assert sum(rewards[-3:]) / 3 > 0.75, rewards
