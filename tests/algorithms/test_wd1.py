"""wd1: the weighted-likelihood loss on a hand-computed group, its gradient signs, the per-group
softmax inside the algorithm, and the recipe-time checks."""

from __future__ import annotations

import math

import pytest
import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from dare.algorithms import ALGORITHMS
from dare.config import RecipeError, build_recipe
from dare.config.schema import build_stage
from dare.diffusion.estimators import NoisePlan
from dare.diffusion.rl_registry import POLICY_LOSSES
from dare.models import tiny

V = 48


def test_wd1_loss_on_a_hand_computed_group():
    # 3 completions, response tokens (mask) and per-token log-probs:
    #   S = [-1 - 1, -3, -0.5 - 1.5 - 2] = [-2, -3, -4];  A = [1, -0.5, -0.5] (r - mean of r = [1, 0, 0] x 1.5)
    log_prob = torch.tensor([[-1.0, -1.0, 0.0], [-3.0, 0.0, 0.0], [-0.5, -1.5, -2.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5, -0.5])[:, None] * mask
    e, f = math.exp(1.0), math.exp(-0.5)
    w_pos = [e / (e + 2 * f), f / (e + 2 * f), f / (e + 2 * f)]  # softmax(A)
    w_neg = [f / (f + 2 * e), e / (f + 2 * e), e / (f + 2 * e)]  # softmax(-A)
    S = [-2.0, -3.0, -4.0]
    expected = -sum(w * s for w, s in zip(w_pos, S)) + sum(w * s for w, s in zip(w_neg, S))
    fn = POLICY_LOSSES.get("wd1").fn
    loss, metrics = fn(log_prob.detach() + 5.0, log_prob, adv, mask)  # the old policy plays no part
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["actor/pg_loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["actor/wd1_seq_logp_mean"] == pytest.approx(-3.0)
    loss.backward()
    # d loss / d logp_token = w-_i - w+_i on response tokens: descent raises the best completion's
    # likelihood (w+ > w-) and lowers the others'; nothing flows outside the response
    for i in range(3):
        torch.testing.assert_close(log_prob.grad[i], (w_neg[i] - w_pos[i]) * mask[i].float())
    assert log_prob.grad[0, 0] < 0 < log_prob.grad[1, 0]
    assert get_policy_loss_fn("wd1") is fn  # the one registry, mirrored into verl's


def wd1_batch(B: int = 4, P: int = 5, L: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rmask = torch.zeros(B, P + L, dtype=torch.bool)
    rmask[:, P : P + L - 1] = True
    return {
        "input_ids": torch.randint(5, V - 3, (B, P + L), generator=g),
        "attention_mask": torch.ones(B, P + L, dtype=torch.long),
        "response_mask": rmask,
        "advantages": torch.tensor([0.5, -0.5, 1.0, -1.0])[:, None] * rmask,  # two groups of two
        "noise_seed": torch.arange(B * 2).view(B, 2) + 3,
        "group_index": torch.tensor([0, 0, 1, 1]),
    }


def test_the_algorithm_weighs_within_each_group_and_redraws_the_mask_per_update():
    model = tiny("llada", V).eval()
    stage = build_stage({"kind": "rl", "algorithm": "wd1", "steps": 1, "mu": 2}, "stages[0]", None)
    algo = ALGORITHMS.get("wd1")(stage.args, model.diffusion_spec())
    assert (algo.args.advantage, algo.args.policy_loss, algo.updates_per_step) == ("grpo_mean", "wd1", 2)
    updates = algo.prepare(model, None, wd1_batch())
    assert len(updates) == 2 and not torch.equal(updates[0]["plan.prompt_mask"], updates[1]["plan.prompt_mask"])
    assert "old_log_prob" not in updates[0] and "ref_log_prob" not in updates[0]  # no ratio, no reference
    loss, metrics = algo.compute_loss(model, updates[0])
    # the same loss from the per-group formula on the estimator's log-probs
    u = updates[0]
    with torch.no_grad():
        logp = algo.estimator.logp(model, u, NoisePlan.from_tensors(u, "plan."), algo.spec)
    fn = POLICY_LOSSES.get("wd1").fn
    per_group = [fn(None, logp[r], u["advantages"][r], u["response_mask"][r])[0] for r in (slice(0, 2), slice(2, 4))]
    assert loss.item() == pytest.approx(torch.stack(per_group).mean().item(), rel=1e-5)
    assert metrics["actor/loss"] == pytest.approx(loss.item()) and metrics["actor/entropy"] > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_recipe_checks():
    with pytest.raises(RecipeError, match=r"stages\[0\].policy_loss: unknown policy loss 'wd2'"):
        build_stage({"kind": "rl", "algorithm": "wd1", "steps": 1, "policy_loss": "wd2"}, "stages[0]", None)
    with pytest.raises(RecipeError, match=r"stages\[0\].p_mask_prompt"):
        build_stage({"kind": "rl", "algorithm": "wd1", "steps": 1, "p_mask_prompt": 1.0}, "stages[0]", None)
    recipe = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": 8},
        "eval": {"sampling": {"algorithm": "llada", "steps": 8}},
        "resources": {"num_workers": 2},
        "stages": [{"algorithm": "wd1", "steps": 1, "batch_size": 6, "grad_accum": 2,
                    "sampling": {"algorithm": "llada", "steps": 8}}],
    }  # fmt: skip
    with pytest.raises(RecipeError, match=r"stages\[0\].batch_size: .*multiple of num_workers x grad_accum = 4"):
        build_recipe(recipe)
    recipe["stages"][0]["batch_size"] = 8
    assert build_recipe(recipe).stages[0].args.policy_loss == "wd1"
