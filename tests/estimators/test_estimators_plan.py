"""Noise plans: coupled masks complementary, fresh randomness per call, reproducible per seed,
masks only where allowed, plans that travel with the batch."""

import pytest
import torch
from rl_est_helpers import V, make_rl_batch

from dare.diffusion.estimators import NoisePlan, build_estimator, rl_batch_masks
from dare.models import tiny


def test_batch_masks_completion_region():
    batch = make_rl_batch()
    m = rl_batch_masks(batch)
    # every row's completion is columns 6.. (P = 6), including the EOS tail after the first EOS
    assert bool(m.completion[:, 6:].all()) and not bool(m.completion[:, :6].any())
    assert bool((m.response <= m.completion).all())
    assert m.prompt.sum(-1).tolist() == [3, 5, 6]


def test_coupled_masks_are_complementary():
    batch = make_rl_batch()
    m = rl_batch_masks(batch)
    plan = build_estimator("coupled").sample(batch, torch.Generator().manual_seed(0))
    full, m1, m2 = plan.view_masks.unbind(1)  # [B, L] each
    assert torch.equal(full, m.completion)
    assert torch.equal(m1 | m2, m.completion)  # union = completion (which contains the response)
    assert not bool((m1 & m2).any())  # disjoint
    assert torch.equal((m1 | m2) & m.response, m.response)
    assert bool(((plan.t >= 0.2) & (plan.t <= 0.8)).all())
    # weights: 1/2 * (1, 1/t, 1/(1-t)) on the response, 0 elsewhere
    t = plan.t[:, None]
    resp = m.response.float()
    torch.testing.assert_close(plan.weights[:, 0], 0.5 * resp)
    torch.testing.assert_close(plan.weights[:, 1], 0.5 * resp * m1 / t)
    torch.testing.assert_close(plan.weights[:, 2], 0.5 * resp * m2 / (1 - t))
    assert not bool(plan.prompt_mask.any())  # p_mask_prompt = 0 by default


def test_fresh_masks_each_call_and_reproducible_per_seed():
    batch = make_rl_batch(prompt_lens=(4, 6), resp_lens=(10, 10))
    for name, args in (("coupled", {}), ("d1", {"p_mask_prompt": 0.5})):
        est = build_estimator(name, **args)
        g = torch.Generator().manual_seed(7)
        plans = [est.sample(batch, g) for _ in range(3)]  # successive steps / inner iterations
        key = (lambda p: p.view_masks) if name == "coupled" else (lambda p: p.prompt_mask)
        assert not torch.equal(key(plans[0]), key(plans[1]))
        assert not torch.equal(key(plans[1]), key(plans[2]))
        again = est.sample(batch, torch.Generator().manual_seed(7))
        for f in ("prompt_mask", "view_masks", "weights", "t"):
            assert torch.equal(getattr(again, f), getattr(plans[0], f))
    coupled = build_estimator("coupled")
    g = torch.Generator().manual_seed(3)
    assert not torch.equal(coupled.sample(batch, g).t, coupled.sample(batch, g).t)


def test_d1_masks_whole_completion_and_only_prompt_tokens():
    batch = make_rl_batch()
    m = rl_batch_masks(batch)
    plan = build_estimator("d1", p_mask_prompt=0.5).sample(batch, torch.Generator().manual_seed(0))
    assert plan.num_views == 1
    assert torch.equal(plan.view_masks[:, 0], m.completion)
    assert bool((plan.prompt_mask <= m.prompt).all())  # never padding, never the completion
    assert bool(plan.prompt_mask.any())
    assert torch.equal(plan.weights[:, 0], m.response.float())
    assert torch.equal(plan.t, torch.ones(3))


def test_shared_t_option():
    batch = make_rl_batch()
    plan = build_estimator("coupled", shared_t=True).sample(batch, torch.Generator().manual_seed(0))
    assert bool((plan.t == plan.t[0]).all())


def test_plan_travels_with_the_batch():
    batch = make_rl_batch()
    est = build_estimator("coupled")
    plan = est.sample(batch, torch.Generator().manual_seed(0))
    flat = plan.as_tensors()
    assert all(v.shape[0] == 3 for v in flat.values())
    back = NoisePlan.from_tensors({**batch, **flat})
    assert all(torch.equal(getattr(back, k), getattr(plan, k)) for k in ("prompt_mask", "view_masks", "weights", "t"))
    # per-row generators: a row's plan does not depend on the rest of the batch
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    rows = est.sample_rows(batch, gens)
    one = est.sample({k: v[1:2] for k, v in batch.items()}, torch.Generator().manual_seed(12))
    assert torch.equal(rows.view_masks[1:2], one.view_masks) and torch.equal(rows.t[1:2], one.t)


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_padding_row_gives_zero_estimates(family):
    # an all-padding row (e.g. added to make the batch divisible across workers)
    batch = make_rl_batch()
    batch["attention_mask"][2] = 0
    batch["response_mask"][2] = False
    model = tiny(family, V).eval()
    for name in ("d1", "coupled"):
        est = build_estimator(name, p_mask_prompt=0.3)
        plan = est.sample(batch, torch.Generator().manual_seed(0))
        assert not bool(plan.prompt_mask[2].any()) and not bool(plan.view_masks[2].any())
        with torch.no_grad():
            lp = est.logp(model, batch, plan)
        assert bool(torch.isfinite(lp).all()) and bool((lp[2] == 0).all()) and bool((lp[:2] != 0).any())
