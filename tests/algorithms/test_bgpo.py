"""BGPO's surrogate: a hand-computed loss, the boundary property (a lower bound of the
ELBO-ratio objective, equal in value and gradient on-policy) and its per-sample split."""

import math

import pytest
import torch

from dare.algorithms.bgpo import bgpo_loss, bgpo_ratio


def test_loss_by_hand():
    elbo = torch.tensor([[-1.0, -1.2], [-2.0, -1.0]], dtype=torch.float64)
    old = torch.tensor([[-1.1, -1.1], [-2.0, -1.5]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    lengths = torch.tensor([1, 3])
    ratio = bgpo_ratio(elbo, old, adv)
    # row 0 (A > 0): 1 + Delta = 1.1, 0.9; row 1 (A < 0): exp(Delta) = 1, e^0.5
    torch.testing.assert_close(ratio, torch.tensor([[1.1, 0.9], [1.0, math.exp(0.5)]], dtype=torch.float64))
    loss, metrics = bgpo_loss(elbo, old, adv, lengths, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
    # row 0: max(-r, -clip(r)) = -1.1 (clip 1.2 inactive), -0.9; row 1: 2 * max(r, clip(r)) = 2, 2 e^0.5
    # (e^0.5 = 1.65 > 1.2: the unclipped term is larger); dual clip 2 * 3 = 6 not reached
    row0 = (-1.1 - 0.9) / 2
    row1 = (2.0 + 2 * math.exp(0.5)) / 2
    assert float(loss.detach()) == pytest.approx((1 * row0 + 3 * row1) / 4, rel=1e-12)
    assert metrics["actor/pg_clipfrac"] == 0.0
    # a large negative-advantage ratio is capped by the dual clip at c = 3
    big, _ = bgpo_loss(old + 2.0, old, adv, lengths, clip_ratio_c=3.0)
    row0 = -1.2  # 1 + Delta = 3 clipped to 1.2 for A > 0
    assert float(big) == pytest.approx((1 * row0 + 3 * 2.0 * 3.0) / 4, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_surrogate_lower_bounds_the_elbo_ratio_objective(seed):
    """(1/J) sum_j A r_j <= A exp(mean_j Delta_j) for either sign of A (1 + x <= e^x; Jensen)."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(64, 8, generator=g, dtype=torch.float64)
    elbo = old + 0.5 * torch.randn(64, 8, generator=g, dtype=torch.float64)
    adv = torch.randn(64, generator=g, dtype=torch.float64)
    surrogate = adv * bgpo_ratio(elbo, old, adv).mean(-1)  # [B]
    true = adv * torch.exp((elbo - old).mean(-1))  # [B]
    assert bool((surrogate <= true + 1e-12).all())
    assert bool((surrogate < true - 1e-6).any())  # the bound is strict off-policy


def test_on_policy_value_and_gradient_equal_the_elbo_objective():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def f():  # [B, J], a differentiable stand-in for the ELBO samples
        return torch.tanh(theta) - 1.0

    elbo, old = f(), f().detach()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], dtype=torch.float64)
    surrogate = (adv * bgpo_ratio(elbo, old, adv).mean(-1)).sum()
    (grad_s,) = torch.autograd.grad(surrogate, theta)
    elbo = f()
    true = (adv * torch.exp((elbo - old).mean(-1))).sum()
    (grad_t,) = torch.autograd.grad(true, theta)
    assert float(surrogate.detach()) == pytest.approx(float(true.detach()))
    torch.testing.assert_close(grad_s, grad_t)
    # and the loss's gradient is the (length-weighted) ELBO policy gradient -A * grad ELBO
    loss, metrics = bgpo_loss(f(), old, adv, torch.ones(6), clip_ratio_c=None)
    (grad_l,) = torch.autograd.grad(loss, theta)
    (grad_pg,) = torch.autograd.grad(-(adv[:, None] * f()).mean(-1).sum() / 6, theta)
    torch.testing.assert_close(grad_l, grad_pg)
    assert metrics["actor/ppo_ratio_mean"] == pytest.approx(1.0)


def test_per_sample_backward_equals_the_joint_backward():
    """The loss is a sum over samples: backpropagating each sample's term on its own (BGPO's
    constant-memory step) accumulates the gradient of the whole."""
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    old = (torch.sin(theta) - 1.0).detach() + 0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.3, -0.7], dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3, 1])
    loss, _ = bgpo_loss(torch.sin(theta) - 1.0, old, adv, lengths)
    (joint,) = torch.autograd.grad(loss, theta)
    acc = torch.zeros_like(theta)
    for j in range(3):
        part, _ = bgpo_loss((torch.sin(theta) - 1.0)[:, j : j + 1], old[:, j : j + 1], adv, lengths)
        acc += torch.autograd.grad(part / 3, theta)[0]
    torch.testing.assert_close(acc, joint)


def test_dual_clip_must_exceed_one():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        bgpo_loss(x, x, torch.ones(1), torch.ones(1), clip_ratio_c=1.0)
