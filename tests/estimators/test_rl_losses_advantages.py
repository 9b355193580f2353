"""Group advantages on a hand example (grpo with / without std, rloo, d1's r - mean) with a
zero-variance group and a group of one; registry entries (the settings each reads, verl's table)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import get_adv_estimator_fn

from dare.diffusion.rl_losses import ADVANTAGES, compute_advantages, group_stats, grpo_mean_advantage
from dare.diffusion.rl_registry import register_advantage

UID = np.array(["a", "a", "a", "b", "b", "b", "c", "c", "d"], dtype=object)
SCORES = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # c: zero variance; d: one row
S = 1 / math.sqrt(3)  # the unbiased std of (1, 0, 1) and (1, 0, 0)


def _mask(B=9, L=5):
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        mask[b, : 1 + b % L] = True
    return mask


def _row_adv(adv, mask):
    rows = adv.sum(-1) / mask.sum(-1)
    assert bool((adv[~mask] == 0).all())  # zero outside the response
    assert torch.allclose(adv, rows[:, None] * mask)  # one value per row, broadcast
    return rows


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("grpo", {}, [S, -2 * S, S, 2 * S, -S, -S, 0, 0, 1]),  # verl: a group of one keeps r (mean 0, std 1)
        ("grpo", {"norm_adv_by_std_in_grpo": False}, [1 / 3, -2 / 3, 1 / 3, 2 / 3, -1 / 3, -1 / 3, 0, 0, 1]),
        ("rloo", {}, [0.5, -1.0, 0.5, 1.0, -0.5, -0.5, 0, 0, 1]),  # r_i - mean of the others
        ("grpo_mean", {}, [1 / 3, -2 / 3, 1 / 3, 2 / 3, -1 / 3, -1 / 3, 0, 0, 0]),  # d1: r - mean, alone -> 0
    ],
)
def test_advantages_hand_example(name, kwargs, expected):
    mask = _mask()
    adv, metrics = compute_advantages(name, SCORES, UID, mask, **kwargs)
    assert adv.shape == mask.shape
    torch.testing.assert_close(_row_adv(adv, mask), torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)
    assert metrics["reward/num_groups"] == 4
    assert metrics["reward/zero_std_groups"] == 2  # "c" (all equal) and "d" (one row)
    assert metrics["reward/zero_std_group_frac"] == 0.5


def test_group_stats_and_uid_types():
    stats = group_stats(SCORES, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3]))
    assert stats["reward/zero_std_groups"] == 2 and stats["reward/score_mean"] == pytest.approx(6 / 9)
    adv, _ = compute_advantages("grpo_mean", SCORES, [0, 0, 0, 1, 1, 1, 2, 2, 3], _mask())
    ref, _ = compute_advantages("grpo_mean", SCORES, UID, _mask())
    assert torch.equal(adv, ref)


def test_registries():
    assert get_adv_estimator_fn("grpo_mean") is grpo_mean_advantage
    # the built-ins; algorithm modules register their own (tracerl: grpo_pop) when dare.algorithms loads
    assert {"grpo", "grpo_mean", "rloo"} <= set(ADVANTAGES.names())
    with pytest.raises(KeyError, match="did you mean 'rloo'"):
        compute_advantages("rlo", SCORES, UID, _mask())
    with pytest.raises(ValueError, match="scores"):
        compute_advantages("grpo", SCORES[:3], UID, _mask())


def test_registered_estimators_declare_the_settings_they_read():
    """The RL trainer passes `ADVANTAGES.get(name).kwargs(settings)`: no branch on the name."""
    settings = SimpleNamespace(norm_adv_by_std=False)
    assert ADVANTAGES.get("grpo").kwargs(settings) == {"norm_adv_by_std_in_grpo": False}
    assert ADVANTAGES.get("rloo").kwargs(settings) == {} and ADVANTAGES.get("grpo_mean").kwargs(settings) == {}
    for name in ADVANTAGES:  # dare's entry is verl's estimator of the same name
        assert ADVANTAGES.get(name).fn is get_adv_estimator_fn(name)
    adv, _ = compute_advantages("grpo", SCORES, UID, _mask(), **ADVANTAGES.get("grpo").kwargs(settings))
    torch.testing.assert_close(_row_adv(adv, _mask())[:3], torch.tensor([1 / 3, -2 / 3, 1 / 3]), atol=1e-6, rtol=0)


def test_register_advantage_writes_both_tables_once():
    def half_score(token_level_rewards, response_mask, index, config=None, scale=1.0, **kwargs):
        adv = 0.5 * scale * token_level_rewards.sum(-1, keepdim=True) * response_mask
        return adv, adv

    register_advantage("test_half_score", args=(("weight", "scale"),))(half_score)
    assert get_adv_estimator_fn("test_half_score") is half_score  # verl's actor can select it too
    kwargs = ADVANTAGES.get("test_half_score").kwargs(SimpleNamespace(weight=2.0))
    adv, _ = compute_advantages("test_half_score", SCORES, UID, _mask(), **kwargs)
    torch.testing.assert_close(_row_adv(adv, _mask()), SCORES)
    register_advantage("test_half_score", args=(("weight", "scale"),))(half_score)  # the same function again: fine
    with pytest.raises(ValueError, match="already binds 'test_half_score'"):
        register_advantage("test_half_score")(lambda **kw: None)
    assert ADVANTAGES.get("test_half_score").fn is half_score
    with pytest.raises(ValueError, match="already binds 'gae'"):  # verl's own name, another function
        register_advantage("gae")(half_score)
