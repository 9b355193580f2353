"""The GRPO algorithms (d1, coupled_grpo) as the actor runs them: noise plans from per-row
seeds, old / reference log-probs before the first update, the clipped loss."""

import copy

import pytest
import torch

from dare.algorithms import ALGORITHMS
from dare.config.schema import build_stage
from dare.diffusion.estimators import NoisePlan
from dare.models import tiny

V = 48


def rl_batch(family: str, B: int = 4, P: int = 5, L: int = 6):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, V - 3, (B, P), generator=g)
    resp = torch.randint(5, V - 3, (B, L), generator=g)
    resp[:, -2:] = V - 2  # eos tail
    attn = torch.ones(B, P + L, dtype=torch.long)
    attn[0, :2] = 0  # left padding
    rmask = torch.zeros(B, P + L, dtype=torch.bool)
    rmask[:, P : P + L - 1] = True  # response up to and including its first eos
    return {
        "input_ids": torch.cat([prompt, resp], 1),
        "attention_mask": attn,
        "response_mask": rmask,
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * rmask,
        "noise_seed": torch.arange(B * 2).view(B, 2) + 11,
    }


def algorithm(name, spec, **args):
    stage = build_stage({"kind": "rl", "algorithm": name, "steps": 1, **args}, "stages[0]", None)
    return ALGORITHMS.get(name)(stage.args, spec)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("name", ["d1", "coupled_grpo"])
def test_first_inner_iteration_has_ratio_one(family, name):
    model = tiny(family, V).eval()
    algo = algorithm(name, model.diffusion_spec(), mu=1)
    (update,) = algo.prepare(model, None, rl_batch(family))
    assert "old_log_prob" not in update and "ref_log_prob" not in update
    loss, metrics = algo.compute_loss(model, update)
    assert metrics["actor/ppo_ratio_mean"] == pytest.approx(1.0)
    assert metrics["actor/pg_clipfrac"] == 0.0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_mu_iterations_share_plans_with_old_and_reference_and_differ_between_iterations():
    model = tiny("llada", V).eval()
    ref = copy.deepcopy(model)
    algo = algorithm("coupled_grpo", model.diffusion_spec(), mu=2, beta=0.01)

    class Ref:
        def __call__(self):
            import contextlib

            return contextlib.nullcontext(ref)

    updates = algo.prepare(model, Ref(), rl_batch("llada"))
    assert len(updates) == 2
    a, b = updates
    assert not torch.equal(a["plan.view_masks"], b["plan.view_masks"])  # fresh noise per iteration
    for u in updates:
        # same weights, same plan: old == current == reference
        torch.testing.assert_close(u["old_log_prob"], u["ref_log_prob"])
        loss, metrics = algo.compute_loss(model, u)
        assert metrics["actor/ppo_ratio_mean"] == pytest.approx(1.0)
        assert metrics["actor/kl"] == pytest.approx(0.0, abs=1e-7)
    # the plan is a pure function of the row seeds: preparing again gives the same masks
    again = algo.prepare(model, Ref(), rl_batch("llada"))
    torch.testing.assert_close(again[1]["plan.view_masks"], b["plan.view_masks"])


def test_rl_args_are_validated():
    from dare.config import RecipeError

    with pytest.raises(RecipeError, match=r"stages\[0\].t_min"):
        build_stage(
            {"kind": "rl", "algorithm": "coupled_grpo", "steps": 1, "t_min": 0.9, "t_max": 0.2}, "stages[0]", None
        )
    with pytest.raises(RecipeError, match=r"unknown key for algorithm 'd1'.*did you mean 'p_mask_prompt'"):
        build_stage({"kind": "rl", "algorithm": "d1", "steps": 1, "p_mask_promt": 0.1}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].num_generations"):
        build_stage({"kind": "rl", "algorithm": "d1", "steps": 1, "num_generations": 1}, "stages[0]", None)


def test_reward_specs_are_checked_at_recipe_load(tmp_path):
    from dare.config import RecipeError

    base = {"kind": "rl", "algorithm": "coupled_grpo", "steps": 1}
    stage = build_stage({**base, "rewards": [{"name": "sort", "weight": 1.0}]}, "stages[0]", None)
    assert stage.args.rewards[0].name == "sort" and stage.args.rewards[0].weight == 1.0  # a typed RewardSpec
    with pytest.raises(RecipeError, match=r"stages\[0\].rewards\[0\]: .*sortt"):
        build_stage({**base, "rewards": [{"name": "sortt"}]}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].rewards\[0\]: .*missing.py"):
        build_stage({**base, "rewards": [{"path": str(tmp_path / "missing.py:fn")}]}, "stages[0]", None)


def test_a_batch_without_the_algorithms_tensors_is_refused_by_name():
    algo = algorithm("coupled_grpo", tiny("llada", V).diffusion_spec())
    batch = rl_batch("llada")
    algo.check_batch(batch)  # complete
    del batch["advantages"]
    with pytest.raises(KeyError, match=r"coupled_grpo: the batch lacks \['advantages'\]"):
        algo.check_batch(batch)


def test_default_policy_loss_is_ppo_clip_with_the_stage_clip_settings():
    """`policy_loss` defaults to dare_ppo_clip built from clip_eps / clip_eps_high / clip_ratio_c:
    the same floats as calling the PPO-clip objective directly."""
    from dare.algorithms.grpo import PLAN_PREFIX
    from dare.diffusion.rl_losses import PPOClipConfig, rl_loss

    model = tiny("llada", V).eval()
    algo = algorithm("d1", model.diffusion_spec(), clip_eps=0.3, clip_eps_high=0.4, clip_ratio_c=3.0)
    assert algo.args.policy_loss == "dare_ppo_clip"
    (update,) = algo.prepare(model, None, rl_batch("llada"))
    update["old_log_prob"] = torch.full(update["response_mask"].shape, -3.5)  # ratios far from 1: clips active
    loss, metrics = algo.compute_loss(model, update)
    logp = algo.estimator.logp(model, update, NoisePlan.from_tensors(update, PLAN_PREFIX), algo.spec)
    clip = PPOClipConfig(clip_eps=0.3, clip_eps_high=0.4, clip_ratio_c=3.0)
    ref, ref_metrics = rl_loss(update["old_log_prob"], logp, update["advantages"], update["response_mask"], config=clip)
    assert loss.item() == ref.item() and metrics["actor/pg_clipfrac"] == ref_metrics["actor/pg_clipfrac"] > 0


def test_policy_loss_is_chosen_by_name_from_the_registry():
    from dare.config import RecipeError
    from dare.diffusion.rl_registry import register_policy_loss

    def scaled_pg(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights):
        # plain policy gradient scaled by the loss's config (here: clip_eps), token mean
        mask = response_mask.float()
        loss = -(config * advantages * log_prob * mask).sum() / mask.sum()
        return loss, {"actor/pg_loss": loss.item()}

    register_policy_loss("test_scaled_pg", config=lambda args: args.clip_eps)(scaled_pg)
    model = tiny("llada", V).eval()
    algo = algorithm("coupled_grpo", model.diffusion_spec(), policy_loss="test_scaled_pg", clip_eps=0.25)
    (update,) = algo.prepare(model, None, rl_batch("llada"))
    loss, metrics = algo.compute_loss(model, update)
    logp = algo.estimator.logp(model, update, NoisePlan.from_tensors(update, "plan."), algo.spec)
    mask = update["response_mask"].float()
    expected = -(0.25 * update["advantages"] * logp * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    assert metrics["actor/loss"] == pytest.approx(expected.item()) and "actor/pg_clipfrac" not in metrics
    with pytest.raises(RecipeError, match=r"stages\[0\].policy_loss: unknown policy loss 'ppo_clip'.*dare_ppo_clip"):
        build_stage({"kind": "rl", "algorithm": "d1", "steps": 1, "policy_loss": "ppo_clip"}, "stages[0]", None)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("name", ["d1", "coupled_grpo"])
def test_grpo_learns_the_toy_reward(family, name):
    """The actor's d1 / coupled-GRPO update on every family, in process (tests/algorithms/rl_toy.py):
    20 steps raise the toy reward. Measured (2-core CPU, seed 0): first-5 -> last-5 mean reward
    +0.66 to +0.87 on the six cases, 1-2 s each. The end-to-end runs through `dare run` with held-out
    accuracy are tests/trainer/test_rl_stage.py (LLaDA) and benchmarks/rl_families.py (Dream, SDAR)."""
    from rl_toy import train_toy

    rewards = train_toy(name, family, steps=20, beta=0.0)
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.4, rewards
