"""BGPO's surrogate: a hand-computed loss, the boundary property (a lower bound of the
ELBO-ratio objective, equal in value and gradient on-policy) and its per-sample split."""

import math

import pytest
import torch

from dare.algorithms.bgpo import bgpo_loss, bgpo_ratio
from dare.diffusion.rl_losses import PPOClipConfig


def loss_over_samples(elbo, old, adv, lengths, clip_ratio_c=3.0):
    """mean_j of the per-sample loss, each sample's value on every response token (as the algorithm)."""
    L = int(lengths.max())
    mask = torch.arange(L)[None, :] < lengths[:, None]  # [B, L]
    cfg = PPOClipConfig(clip_eps=0.2, clip_ratio_c=clip_ratio_c)
    total, metrics = 0.0, None
    for j in range(elbo.shape[1]):
        lj, metrics = bgpo_loss(
            old[:, j : j + 1].expand(-1, L), elbo[:, j : j + 1].expand(-1, L), adv[:, None].expand(-1, L), mask,
            "token-mean", cfg,
        )  # fmt: skip
        total = total + lj / elbo.shape[1]
    return total, metrics


def test_loss_by_hand():
    elbo = torch.tensor([[-1.0, -1.2], [-2.0, -1.0]], dtype=torch.float64)
    old = torch.tensor([[-1.1, -1.1], [-2.0, -1.5]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    lengths = torch.tensor([1, 3])
    ratio = bgpo_ratio(elbo, old, adv[:, None])
    # row 0 (A > 0): 1 + Delta = 1.1, 0.9; row 1 (A < 0): exp(Delta) = 1, e^0.5
    torch.testing.assert_close(ratio, torch.tensor([[1.1, 0.9], [1.0, math.exp(0.5)]], dtype=torch.float64))
    loss, metrics = loss_over_samples(elbo, old, adv, lengths)
    # row 0: max(-r, -clip(r)) = -1.1 (clip 1.2 inactive), -0.9; row 1: 2 * max(r, clip(r)) = 2, 2 e^0.5
    # (e^0.5 = 1.65 > 1.2: the unclipped term is larger); dual clip 2 * 3 = 6 not reached
    row0 = (-1.1 - 0.9) / 2
    row1 = (2.0 + 2 * math.exp(0.5)) / 2
    assert float(loss.detach()) == pytest.approx((1 * row0 + 3 * row1) / 4, rel=1e-12)
    assert metrics["actor/pg_clipfrac"] == 0.0
    # a large negative-advantage ratio is capped by the dual clip at c = 3
    big, _ = loss_over_samples(old + 2.0, old, adv, lengths)
    row0 = -1.2  # 1 + Delta = 3 clipped to 1.2 for A > 0
    assert float(big) == pytest.approx((1 * row0 + 3 * 2.0 * 3.0) / 4, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_surrogate_lower_bounds_the_elbo_ratio_objective(seed):
    """(1/J) sum_j A r_j <= A exp(mean_j Delta_j) for either sign of A (1 + x <= e^x; Jensen);
    per-token-normalised differences stay far above -1, where 1 + Delta is clamped."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(64, 8, generator=g, dtype=torch.float64)
    elbo = old + 0.2 * torch.randn(64, 8, generator=g, dtype=torch.float64)
    adv = torch.randn(64, generator=g, dtype=torch.float64)
    surrogate = adv * bgpo_ratio(elbo, old, adv[:, None]).mean(-1)  # [B]
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
    surrogate = (adv * bgpo_ratio(elbo, old, adv[:, None]).mean(-1)).sum()
    (grad_s,) = torch.autograd.grad(surrogate, theta)
    elbo = f()
    true = (adv * torch.exp((elbo - old).mean(-1))).sum()
    (grad_t,) = torch.autograd.grad(true, theta)
    assert float(surrogate.detach()) == pytest.approx(float(true.detach()))
    torch.testing.assert_close(grad_s, grad_t)
    # and the loss's gradient is the (length-weighted) ELBO policy gradient -A * grad ELBO
    loss, metrics = loss_over_samples(f(), old, adv, torch.ones(6, dtype=torch.long), clip_ratio_c=None)
    (grad_l,) = torch.autograd.grad(loss, theta)
    (grad_pg,) = torch.autograd.grad(-(adv[:, None] * f()).mean(-1).sum() / 6, theta)
    torch.testing.assert_close(grad_l, grad_pg)
    assert metrics["actor/ppo_ratio_mean"] == pytest.approx(1.0)


def test_algorithm_first_update_is_on_policy_and_mu_keeps_old_samples():
    from rl_utils import ADV, V, make_algorithm, toy_batch

    from dare.models import tiny

    model = tiny("dream", V).eval()
    algo = make_algorithm("bgpo", model, mc_num=3, mu=2)
    batch, adv = toy_batch(P=4, L=5), ADV
    updates = algo.prepare(model, None, batch)
    assert updates[0]["old_elbo_samples"].shape == (4, 3)
    loss, metrics = algo.compute_loss(model, updates[0])
    assert metrics["actor/ppo_ratio_mean"] == pytest.approx(1.0)  # same weights, same plan
    # on-policy the loss is the ELBO policy gradient's surrogate: -mean_b A_b (its value is -mean A)
    assert float(loss.detach()) == pytest.approx(float(-adv.mean()), rel=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bgpo_args_are_validated():
    from dare.config import RecipeError
    from dare.config.schema import build_stage

    with pytest.raises(RecipeError, match=r"stages\[0\].beta: must be 0"):
        build_stage({"algorithm": "bgpo", "steps": 1, "beta": 0.1}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].mc_num"):
        build_stage({"algorithm": "bgpo", "steps": 1, "mc_num": 0}, "stages[0]", None)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_bgpo_raises_the_reward_of_a_tiny_model(family):
    from rl_utils import rl_learning_run

    rewards = rl_learning_run("bgpo", family, steps=10, mc_num=2)
    assert rewards[0] < 0.45  # a random model: about a third of its tokens in the target set
    assert sum(rewards[-3:]) / 3 > 0.75, rewards


def per_sample_grads(algo, model, batch) -> tuple[list[torch.Tensor], torch.Tensor, dict, list[float]]:
    """Gradients, loss and metrics of `loss_backward` (each part backpropagated as handed over)
    and the shares of its parts."""
    shares = []

    def backward(part, share):
        shares.append(share)
        part.backward()

    model.zero_grad(set_to_none=True)
    loss, metrics = algo.loss_backward(model, batch, backward)
    return [p.grad.clone() for p in model.parameters()], loss, metrics, shares


def one_graph_grads(algo, model, batch) -> tuple[list[torch.Tensor], torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss, metrics = algo.compute_loss(model, batch)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()], loss.detach(), metrics


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("mu", [1, 2])
def test_per_sample_backward_gives_the_one_graph_gradient(family, mu):
    """The actor's path (`loss_backward`: one view's forward and backward at a time) and the
    one-graph `compute_loss` give the same loss, metrics and gradient; with mu = 2 the second
    update is off-policy (weights moved after `prepare`), so both ratio branches and the clip act."""
    from rl_utils import V, make_algorithm, toy_batch

    from dare.models import tiny

    model = tiny(family, V, seed=1)
    algo = make_algorithm("bgpo", model, mc_num=4, mu=mu)
    updates = algo.prepare(model.eval(), None, toy_batch(P=4, L=8, mu=mu))
    with torch.no_grad():  # the policy after an update: the old samples now differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = updates[-1]
    g1, loss1, m1 = one_graph_grads(algo, model.train(), batch)
    g2, loss2, m2, shares = per_sample_grads(algo, model, batch)
    assert shares == [0.25] * 4  # one backward per Monte-Carlo sample
    # measured: max |difference| <= 1.5e-7, largest entry 0.18-0.49 (float32 CPU: view forwards of 4 rows, not 16)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert max(float(a.abs().max()) for a in g1) > 1e-3  # a gradient that can disagree
    assert float(loss2) == pytest.approx(float(loss1), abs=1e-6)
    assert m1.keys() == m2.keys() and all(m2[k] == pytest.approx(m1[k], abs=1e-6) for k in m1)
    if mu == 2:
        assert m1["actor/ppo_ratio_mean"] != pytest.approx(1.0, abs=1e-3)  # off-policy indeed


class SavedActivations:
    """Bytes of the tensors autograd keeps for backward that are not parameters (nor views of
    them), live and at their peak: packed on save, released when their graph is freed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        size = 0 if t.untyped_storage().data_ptr() in self.params else t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        return _Held(t, size, self)

    @staticmethod
    def unpack(held):
        return held.tensor


class _Held:
    def __init__(self, tensor: torch.Tensor, size: int, owner: SavedActivations) -> None:
        self.tensor, self.size, self.owner = tensor, size, owner

    def __del__(self) -> None:
        self.owner.live -= self.size


@pytest.mark.parametrize("per_sample", [True, False])
def test_activation_memory_is_flat_in_the_number_of_samples_per_sample_only(per_sample):
    """Peak saved-activation bytes of one update, J = 1 vs 8 Monte-Carlo samples: flat sample by
    sample, J times larger in one graph."""
    from rl_utils import V, make_algorithm, toy_batch

    from dare.models import tiny

    peaks = {}
    for J in (1, 8):
        model = tiny("llada", V, seed=1).train()
        algo = make_algorithm("bgpo", model, mc_num=J)
        (batch,) = algo.prepare(model, None, toy_batch(P=4, L=8, mu=1))
        acc = SavedActivations(model)
        with torch.autograd.graph.saved_tensors_hooks(acc.pack, acc.unpack):
            if per_sample:
                algo.loss_backward(model, batch, lambda part, share: part.backward())
            else:
                algo.compute_loss(model, batch)[0].backward()
        assert acc.live == 0  # every graph was freed
        peaks[J] = acc.peak
    # measured (tiny llada, 4 rows x 12 tokens): per sample 1.0x, one graph 8.0x
    ratio = peaks[8] / peaks[1]
    assert (ratio < 1.05) if per_sample else (ratio > 6), peaks
