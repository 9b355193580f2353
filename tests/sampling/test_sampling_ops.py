"""The float64 sampling primitives, selection rules and schedules."""

from __future__ import annotations

import math

import pytest
import torch

from dare.sampling.ops import (
    dream_step_count,
    factor_transfer,
    filter_top_k_top_p,
    gumbel_argmax,
    gumbel_argmax_from_uniform,
    linear_step_count,
    planned_counts,
    sample_positions,
    split_evenly,
    threshold_transfer,
    topk_transfer,
)


def test_float32_gumbel_noise_changes_the_outcome_float64_does_not():
    # Token B has a very low logit but draws a uniform very close to 1 (huge Gumbel noise).
    # Exactly (float64): g_B = -log(-log u) = -log(1e-10) = 23.0 cannot beat the 30-nat gap, A wins.
    # In float32, u rounds to 1.0, -log(u) = 0, g_B = +inf: B wins.
    logits = torch.tensor([0.0, -30.0], dtype=torch.float64)
    u = torch.tensor([0.5, 1.0 - 1e-10], dtype=torch.float64)
    exact = gumbel_argmax_from_uniform(logits, u, 1.0)
    float32 = gumbel_argmax_from_uniform(logits.float(), u.float(), 1.0)
    assert int(exact) == 0 and int(float32) == 1
    # dare draws its noise in float64 from the generator: the same draw gives the exact answer
    g = torch.Generator().manual_seed(0)
    u64 = torch.rand((4, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gumbel_argmax(logits.expand(4, 2), 1.0, g), gumbel_argmax_from_uniform(logits, u64, 1.0))


def test_float32_uniforms_cap_the_gumbel_tail():
    # the largest float32 uniform below 1 caps float32 Gumbel noise near 16.6; float64 reaches ~36.7
    top32 = torch.tensor(1.0 - 2.0**-24, dtype=torch.float32)
    top64 = torch.tensor(1.0 - 2.0**-53, dtype=torch.float64)
    assert float(-torch.log(-torch.log(top32))) < 17.0
    assert float(-torch.log(-torch.log(top64))) > 36.0


def test_gumbel_argmax_samples_the_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    draws = gumbel_argmax(logits.expand(200_000, 3), 0.5, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).double() / draws.numel()
    torch.testing.assert_close(freq, (logits / 0.5).softmax(-1), atol=5e-3, rtol=0)
    assert torch.equal(gumbel_argmax(logits, 0.0, None), torch.tensor(0))


def test_top_k_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    assert torch.isinf(filter_top_k_top_p(logits, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_top_k_top_p(logits, 0, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, then 0.8 >= 0.7 stops
    assert (~torch.isinf(filter_top_k_top_p(logits, 0, 0.1))).sum() == 1  # the top token survives


def test_schedules():
    assert split_evenly(10, 4) == [3, 3, 2, 2] and split_evenly(3, 5) == [1, 1, 1, 0, 0]
    for n, s in [(10, 4), (32, 32), (7, 3), (3, 5), (64, 6)]:
        assert planned_counts("linear", n, s) == split_evenly(n, s)  # ceil rule step by step
    assert int(linear_step_count(torch.tensor([5]), 3, 4)) == 5  # last step takes the rest
    counts = planned_counts("dream", 16, 8)
    assert sum(counts) == 16 and counts[-1] > 0
    # Dream: int(n * (1 - s/t)) with t, s from linspace(1, eps, steps + 1)
    ts = torch.linspace(1, 1e-3, 9, dtype=torch.float64)
    assert int(dream_step_count(torch.tensor([16]), 2, 8, 1e-3)) == math.floor(16 * (1 - ts[3] / ts[2]))
    assert int(dream_step_count(torch.tensor([5]), 7, 8, 1e-3)) == 5


CONF = torch.tensor([[0.95, 0.2, 0.91, 0.6, 0.99]], dtype=torch.float64)


def test_topk_with_ineligible_and_minus_inf():
    eligible = torch.tensor([[True, True, False, True, True]])
    conf = CONF.clone()
    conf[0, 4] = -math.inf  # e.g. an EOS under confidence_eos_eot_inf: last, but still eligible
    assert topk_transfer(conf, eligible, torch.tensor([2])).tolist() == [[True, False, False, True, False]]
    assert topk_transfer(conf, eligible, torch.tensor([4])).tolist() == [[True, True, False, True, True]]


def test_threshold_rule():
    eligible = torch.ones(1, 5, dtype=torch.bool)
    assert threshold_transfer(CONF, eligible, 0.9).tolist() == [[True, False, True, False, True]]
    # nothing above the threshold: the most confident is still taken
    low = torch.tensor([[0.1, 0.3, 0.2, 0.0, 0.05]], dtype=torch.float64)
    assert threshold_transfer(low, eligible, 0.9).tolist() == [[False, True, False, False, False]]


def test_factor_rule():
    eligible = torch.ones(1, 5, dtype=torch.bool)
    # sorted 0.99, 0.95, 0.91, 0.6, 0.2 vs 1 - f/(r+1) with f = 0.3: 0.85, 0.9, 0.925 -> ranks 1, 2 only
    assert factor_transfer(CONF, eligible, 0.3).tolist() == [[True, False, False, False, True]]
    # with f = 1: 0.5, 0.667, 0.75, 0.8 -> 0.6 < 0.8 stops at rank 3
    assert factor_transfer(CONF, eligible, 1.0).tolist() == [[True, False, True, False, True]]


def test_sample_positions_respects_eligibility():
    eligible = torch.tensor([[True, False, True, True, False]])
    picked = sample_positions(CONF, eligible, torch.tensor([2]), 0.5, torch.Generator().manual_seed(0))
    assert picked.sum() == 2 and not (picked & ~eligible).any()


@pytest.mark.parametrize("rule", ["topk", "threshold", "factor"])
def test_rules_never_pick_ineligible(rule):
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(64, 12, dtype=torch.float64, generator=g)
    eligible = torch.rand(64, 12, generator=g) < 0.5
    eligible[:, 0] = True
    out = {
        "topk": lambda: topk_transfer(conf, eligible, torch.full((64,), 20)),
        "threshold": lambda: threshold_transfer(conf, eligible, 0.5),
        "factor": lambda: factor_transfer(conf, eligible, 0.5),
    }[rule]()
    assert not (out & ~eligible).any() and out.any(-1).all()
