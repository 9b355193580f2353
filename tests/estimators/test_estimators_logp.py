"""Estimator log-probs against a direct computation with loops, for every family (MoE included).

The direct computation builds each view by hand and runs the model on it alone; for block
attention (SDAR) it runs the model's own block-causal rule on [context blocks < k, view of
block k] truncated after block k, so it checks the `[x_t ; x_0]` mask path independently.
"""

import pytest
import torch
from rl_est_helpers import V, hand_positions, make_rl_batch

from dare.diffusion.estimators import ESTIMATORS, CoupledEstimator, D1Estimator, build_estimator
from dare.models import tiny

FAMILIES = ("llada", "dream", "sdar", "llada2_moe", "sdar_moe")
ESTIMATOR_ARGS = {"d1": {"p_mask_prompt": 0.3}, "coupled": {"p_mask_prompt": 0.2}}


def hand_view_logp(model, spec, batch, plan, b, k) -> dict[int, float]:
    """log p(x0_i | view k of row b) for each response position i, with loops (float64 softmax)."""
    ids, valid, resp = batch["input_ids"][b], batch["attention_mask"][b].bool(), batch["response_mask"][b]
    L = ids.shape[0]
    start = next(i for i in range(L) if resp[i])
    mask_id = spec.mask_token_id
    context = ids.clone()
    view = ids.clone()
    for i in range(L):
        if plan.prompt_mask[b, i]:
            context[i] = mask_id
            view[i] = mask_id
        if plan.view_masks[b, k, i]:
            view[i] = mask_id
    out = {}
    with torch.no_grad():
        if spec.attention == "full":
            logits = model(view[None], attention_mask=valid[None].long()).logits[0]  # [L, V]
            for i in range(L):
                if resp[i]:
                    src = i - 1 if spec.shift_logits else i
                    out[i] = float(torch.log_softmax(logits[src].double(), -1)[ids[i]])
            return out
        bs = spec.block_size
        prompt_len = int(valid[:start].sum())
        pos = hand_positions(valid, prompt_len, bs)
        for i in range(L):
            if not resp[i]:
                continue
            blk = int(pos[i]) // bs
            cols = [j for j in range(start, L) if int(pos[j]) // bs == blk]
            end = cols[-1] + 1
            seq = context[:end].clone()
            for j in cols:
                seq[j] = view[j]
            logits = model(seq[None], attention_mask=valid[:end][None].long(), position_ids=pos[:end][None]).logits[0]
            out[i] = float(torch.log_softmax(logits[i].double(), -1)[ids[i]])
    return out


@pytest.mark.parametrize("name", ["d1", "coupled"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logp_matches_direct_computation(family, name):
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    batch = make_rl_batch()
    est = build_estimator(name, **ESTIMATOR_ARGS[name])
    plan = est.sample(batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = est.logp(model, batch, plan)  # [B, L]
    B, L = batch["input_ids"].shape
    expected = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        per_view = [hand_view_logp(model, spec, batch, plan, b, k) for k in range(plan.num_views)]
        t = float(plan.t[b])
        for i in per_view[0]:
            if name == "d1":
                expected[b, i] = per_view[0][i]
            else:
                in_m1, in_m2 = bool(plan.view_masks[b, 1, i]), bool(plan.view_masks[b, 2, i])
                assert in_m1 != in_m2  # every response token in exactly one partial view
                partial = per_view[1][i] / t if in_m1 else per_view[2][i] / (1 - t)
                expected[b, i] = 0.5 * (per_view[0][i] + partial)
    assert got.dtype == torch.float32 and got.shape == (B, L)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
    assert bool((got[~batch["response_mask"]] == 0).all())
    assert bool((got[batch["response_mask"]] < 0).all()) or name == "coupled"


def test_registry_and_args():
    assert {"d1", "coupled"} <= set(ESTIMATORS.names())
    assert isinstance(build_estimator("d1"), D1Estimator)
    assert build_estimator("d1").args.p_mask_prompt == 0.15
    c = build_estimator("coupled")
    assert isinstance(c, CoupledEstimator) and (c.args.t_min, c.args.t_max) == (0.2, 0.8)
    with pytest.raises(KeyError, match="did you mean 'coupled'"):
        build_estimator("coupeld")
    with pytest.raises(ValueError, match="t_min"):
        build_estimator("coupled", t_min=0.9, t_max=0.5)
    with pytest.raises(ValueError, match="p_mask_prompt"):
        build_estimator("d1", p_mask_prompt=1.0)


def test_block_path_refuses_shifted_logits():
    model = tiny("sdar", V).eval()
    spec = model.diffusion_spec()
    from dataclasses import replace

    batch = make_rl_batch()
    est = build_estimator("d1")
    plan = est.sample(batch, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="shift_logits"):
        est.logp(model, batch, plan, spec=replace(spec, shift_logits=True))


def test_entropy_is_that_of_the_view_distributions():
    """`logp_and_entropy`: same logp as `logp`; the entropy of a d1 view (one view, whole completion
    masked) equals -sum p log p of the model's distribution at each response position."""
    model = tiny("llada", V).eval()
    batch = make_rl_batch()
    est = build_estimator("d1", p_mask_prompt=0.0)
    plan = est.sample(batch, torch.Generator().manual_seed(2))
    with torch.no_grad():
        logp, ent = est.logp_and_entropy(model, batch, plan)
        torch.testing.assert_close(logp, est.logp(model, batch, plan))
        view = torch.where(plan.view_masks[:, 0], model.config.mask_token_id, batch["input_ids"])
        p = torch.softmax(model(view, attention_mask=batch["attention_mask"]).logits.double(), -1)  # [B, L, V]
        direct = -(p * p.log()).sum(-1)  # [B, L]
    resp = batch["response_mask"]
    torch.testing.assert_close(ent[resp].double(), direct[resp], atol=1e-4, rtol=1e-4)
    assert bool((ent[~resp] == 0).all()) and bool((ent[resp] > 0).all())


class _TwoViewBounds(CoupledEstimator):
    """A two-estimate estimator as SPG-style objectives write one: the per-token max and min over
    the coupled views of log p(o_i | view), each view that scores the token (`estimates` + `logp_named`)."""

    name = "test_two_view_bounds"
    estimates = ("upper", "lower")

    def logp_named(self, model, batch, plan, spec=None):
        from dare.diffusion.estimators import view_logp

        per_view = view_logp(model, batch, plan, spec)  # [B, K, L]
        used = plan.weights != 0
        upper = torch.where(used, per_view, -torch.inf).amax(1)  # [B, L]
        lower = torch.where(used, per_view, torch.inf).amin(1)
        resp = batch["response_mask"]
        return {"upper": torch.where(resp, upper, 0.0), "lower": torch.where(resp, lower, 0.0)}


@pytest.mark.parametrize("name", ["d1", "coupled"])
def test_named_estimates_default_to_logp_with_the_same_numbers(name):
    model = tiny("llada", V).eval()
    batch = make_rl_batch()
    est = build_estimator(name, **ESTIMATOR_ARGS[name])
    plan = est.sample(batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        named = est.logp_named(model, batch, plan)
        assert list(named) == list(est.estimates) == ["logp"]
        assert torch.equal(named["logp"], est.logp(model, batch, plan))
    est.require_estimates(["logp"])
    with pytest.raises(ValueError, match=rf"estimator '{est.name}' computes \['logp'\], not \['upper'\]"):
        est.require_estimates(["upper"])


def test_an_estimator_may_return_several_named_estimates():
    model = tiny("llada", V).eval()
    batch = make_rl_batch()
    est = _TwoViewBounds()
    est.require_estimates(["upper", "lower"])
    plan = est.sample(batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        named = est.logp_named(model, batch, plan)
    resp = batch["response_mask"]
    assert set(named) == {"upper", "lower"} and bool((named["upper"][resp] >= named["lower"][resp]).all())
    # the partial view that masks a token scores it with more context than the full-mask view: they differ
    assert bool((named["upper"][resp] > named["lower"][resp]).any())
