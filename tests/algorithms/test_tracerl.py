"""TraceRL: shrink, the policy loss and the population z-score on hand-computed cases, the value
targets (step-level GAE) on a hand-built trajectory and their gamma = lambda = 1 identity, the
clipped value loss, the algorithm on a rollout batch, and learning."""

import math

import numpy as np
import pytest
import torch
from rl_toy import PROMPTS, V, algorithm, rl_batch, train_toy  # noqa: I001  (pytest puts this folder on sys.path)

from dare.algorithms.tracerl import (
    fragment_count,
    shrink_steps,
    trace_value_targets,
    tracerl_policy_loss,
    value_loss,
)
from dare.diffusion.rl_losses import compute_advantages
from dare.models import tiny
from dare.sampling import SamplingConfig, generate


def test_shrink_merges_consecutive_distinct_steps_per_row():
    steps = torch.tensor([[-1, 3, 0, 5, 3, 7], [-1, 2, 1, -1, 4, 0]])
    # row 0: distinct 0 3 5 7 -> ranks 0 1 2 3 -> pairs; row 1: distinct 0 1 2 4
    assert shrink_steps(steps, 2).tolist() == [[-1, 0, 0, 1, 0, 1], [-1, 1, 0, -1, 1, 0]]
    assert shrink_steps(steps, 1).tolist() == [[-1, 1, 0, 2, 1, 3], [-1, 2, 1, -1, 3, 0]]
    assert int(fragment_count(shrink_steps(steps, 2), steps >= 0)) == 4
    with pytest.raises(ValueError, match="shrink must be >= 1"):
        shrink_steps(steps, 0)


def test_policy_loss_on_a_hand_computed_case():
    lp = torch.zeros(1, 3, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # ratio 1: -(1 - 1 + 2) / (L 3 * F 2)
    loss, m = tracerl_policy_loss(lp.detach(), lp, adv, mask, 2, 3, clip_eps=0.2, beta=0.01)
    assert loss.item() == pytest.approx(-2 / 6) and m["actor/kl"] == 0.0
    # token 0 at ratio 2 (A = 1) is clipped to 1.2; its k3 KL to the old policy is 0.5 - 1 + log 2
    old = torch.tensor([[-math.log(2.0), 0.0, 0.0]])
    loss, m = tracerl_policy_loss(old, lp, adv, mask, 2, 3, clip_eps=0.2, beta=0.01)
    kl = (0.5 - 1 + math.log(2.0)) / 6
    assert m["actor/kl"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(-2.2 / 6 + 0.01 * kl)
    assert m["actor/pg_clipfrac"] == pytest.approx(1 / 3)
    # the log-ratio is clamped to +-10 before exp
    old = torch.tensor([[-15.0, 0.0, 0.0]])
    loss, _ = tracerl_policy_loss(old, lp, adv.neg(), mask, 1, 3, clip_eps=0.2, beta=0.0)
    assert loss.item() == pytest.approx((math.exp(10.0) - 1 + 2) / 3)


def test_advantage_is_the_population_z_score_and_zero_for_a_flat_group():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    uid = np.array([0, 0, 0, 0, 1, 1], dtype=object)
    adv, _ = compute_advantages("grpo_pop", scores, uid, torch.ones(6, 2, dtype=torch.bool))
    # mean 0.5, population std 0.5 (the unbiased std, 0.577, would give +-0.866)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0]))


def test_value_targets_on_a_hand_built_trajectory():
    steps = torch.tensor([[-1, 0, 0, 1, 2]])  # column 0: prompt
    mask = steps >= 0
    values = torch.tensor([[9.0, 0.2, 0.4, 0.5, 0.9]])
    R, A = trace_value_targets(steps, mask, torch.tensor([1.0]), values, gamma=0.9, lam=0.5)
    # r* = (0, 0, 1), V* = (0.3, 0.5, 0.9); R* = (0.81, 0.9, 1); A* = (0.30975, 0.355, 0.1)
    torch.testing.assert_close(R, torch.tensor([[0.0, 0.81, 0.81, 0.9, 1.0]]))
    torch.testing.assert_close(A, torch.tensor([[0.0, 0.40975, 0.20975, 0.355, 0.1]]))


def test_value_targets_gamma_lambda_one_give_the_reward_and_reward_minus_value():
    g = torch.Generator().manual_seed(0)
    B, T = 5, 9
    steps = torch.randint(0, 6, (B, T), generator=g)
    steps[:, :2] = -1  # prompt
    mask = steps >= 0
    mask[1, -2:] = False  # after the first end id
    scores = torch.rand(B, generator=g)
    values = torch.randn(B, T, generator=g)
    R, A = trace_value_targets(steps, mask, scores, values, gamma=1.0, lam=1.0)
    expected_R = scores[:, None].expand(B, T) * mask
    torch.testing.assert_close(R, expected_R)
    torch.testing.assert_close(A, (expected_R - values) * mask)
    # gamma = 1, lambda = 0: the one-step TD error r_i - V_i + V*_{t+1}
    _, A0 = trace_value_targets(steps, mask, scores, values, gamma=1.0, lam=0.0)
    row = 0
    s = steps[row][mask[row]]
    v = values[row][mask[row]]
    uniq = torch.unique(s)
    v_star = torch.stack([v[s == u].mean() for u in uniq])
    for i, (si, vi) in enumerate(zip(s.tolist(), v.tolist())):
        k = int((uniq == si).nonzero())
        nxt = float(v_star[k + 1]) if k + 1 < len(uniq) else 0.0
        r = float(scores[row]) if k == len(uniq) - 1 else 0.0
        assert float(A0[row][mask[row]][i]) == pytest.approx(r - vi + nxt, abs=1e-6)


def test_value_loss_is_the_clipped_one():
    one = torch.ones(1, 1, dtype=torch.bool)
    # V moved 0.5 -> 1.0 (clipped to 0.7), R 0: max(1.0, 0.49) / 2
    assert value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.zeros(1, 1), one, 1, 1).item() == 0.5
    # inside the clip range both terms agree: 0.5 * 1.4^2
    loss = value_loss(torch.tensor([[0.6]]), torch.tensor([[0.5]]), torch.full((1, 1), 2.0), one, 1, 1)
    assert loss.item() == pytest.approx(0.98)


def test_algorithm_merges_steps_and_starts_at_ratio_one():
    model = tiny("llada", V).eval()
    cfg = SamplingConfig(algorithm="llada", gen_length=6, steps=6, block_length=6, temperature=1.0, num_generations=2)
    batch = rl_batch(generate(model, PROMPTS, cfg, generator=torch.Generator().manual_seed(2)), "grpo_pop", mu=2)
    signs = torch.tensor([1.0, -1.0]).repeat(len(PROMPTS))[:, None]
    batch["advantages"] = signs * batch["response_mask"]  # the toy reward is 0 for these rollouts
    algo = algorithm("tracerl", model.diffusion_spec(), mu=2, shrink=2)
    assert (algo.args.clip_eps, algo.args.beta, algo.args.advantage) == (0.2, 0.01, "grpo_pop")
    assert not algo.needs_reference
    updates = algo.prepare(model, None, batch)
    assert len(updates) == 2 and int(updates[0]["decode_step"].max()) == 2  # 6 steps -> 3 fragments
    loss, m = algo.compute_loss(model, updates[0])
    assert m["actor/ppo_ratio_mean"] == pytest.approx(1.0) and m["actor/kl"] == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_value_model_role_targets_and_loss():
    model = tiny("llada", V).eval()
    cfg = SamplingConfig(algorithm="llada", gen_length=4, steps=4, block_length=4, temperature=1.0, num_generations=2)
    batch = rl_batch(generate(model, PROMPTS, cfg, generator=torch.Generator().manual_seed(3)), "grpo_pop")
    plain = algorithm("tracerl", model.diffusion_spec())
    assert type(plain).critic_spec(plain.args) is None  # no value model unless asked for
    algo = algorithm("tracerl", model.diffusion_spec(), use_value_model=True, critic_lr=1e-3)
    assert type(algo).critic_spec(algo.args).lr == 1e-3
    batch["scores"] = torch.arange(len(batch["scores"])).float()
    batch["values"] = torch.full(batch["input_ids"].shape, 0.25)
    (update,) = algo.prepare(model, None, batch)
    # gamma = lambda = 1: A = score - V on every response token
    resp = batch["response_mask"]
    torch.testing.assert_close(update["advantages"], (batch["scores"][:, None] - 0.25) * resp)
    values = batch["values"].clone().requires_grad_(True)
    loss, m = algo.critic_loss(values, batch)
    # V = V_old: 0.5 (score - 0.25)^2 per token, / (L * fragments)
    L = resp.shape[1] - int(resp.any(0).long().argmax())
    F = int(fragment_count(batch["decode_step"], resp))
    expected = 0.5 * (((batch["scores"][:, None] - 0.25) ** 2) * resp).sum() / (L * F)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert values.grad.abs().sum() > 0


@pytest.mark.slow
def test_tracerl_with_a_value_model_learns_the_toy_reward():
    rewards = train_toy("tracerl", steps=20, shrink=2, use_value_model=True, critic_lr=1e-3)
    # measured (2-core CPU, seed 0): see docs/algorithms/tracerl.md
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards


def test_shrink_is_validated_at_load():
    from dare.config import RecipeError
    from dare.config.schema import build_stage

    with pytest.raises(RecipeError, match=r"stages\[0\].shrink"):
        build_stage({"kind": "rl", "algorithm": "tracerl", "steps": 1, "shrink": 0}, "stages[0]", None)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_tracerl_learns_the_toy_reward(family):
    rewards = train_toy("tracerl", family, steps=20, shrink=2)
    # measured (2-core CPU, seed 0): see docs/algorithms/tracerl.md
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
