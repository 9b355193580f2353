"""PPO clip / dual clip / k3 KL on hand-computed cases; registries; old == current at the first
inner iteration (ratio 1, gradient = plain policy gradient); reference == actor gives KL 0."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from rl_est_helpers import V, make_rl_batch
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from dare.diffusion.estimators import build_estimator
from dare.diffusion.rl_losses import (
    DARE_PPO_CLIP,
    PPOClipConfig,
    k3_kl,
    kl_loss,
    ppo_clip_loss,
    rl_loss,
)
from dare.models import tiny

# (advantage, ratio) -> per-token loss with eps = 0.2 (c = 3 dual clip), and whether clipped
CASES = [
    (+1.0, 1.1, -1.1, False),  # inside the range
    (+1.0, 1.5, -1.2, True),  # A > 0, r above 1 + eps: clipped to 1.2
    (+1.0, 0.5, -0.5, False),  # A > 0, r below 1 - eps: unclipped (pessimistic min)
    (-1.0, 0.5, 0.8, True),  # A < 0, r below 1 - eps: clipped to 0.8
    (-1.0, 1.5, 1.5, False),  # A < 0, r above 1 + eps: unclipped
    (-2.0, 5.0, 6.0, False),  # A < 0, r = 5 > c: dual clip caps -A r = 10 at -A c = 6
]


def _tensors(cases):
    adv = torch.tensor([[c[0] for c in cases]])
    log_prob = torch.log(torch.tensor([[c[1] for c in cases]])).requires_grad_()
    return torch.zeros_like(adv), log_prob, adv, torch.ones_like(adv, dtype=torch.bool)


def test_ppo_clip_hand_cases():
    old, logp, adv, mask = _tensors(CASES)
    loss, metrics = ppo_clip_loss(old, logp, adv, mask, config=PPOClipConfig(clip_eps=0.2, clip_ratio_c=3.0))
    expected = [c[2] for c in CASES]
    assert loss.item() == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(2 / 6)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(1 / 6)
    assert metrics["actor/ppo_ratio_max"] == pytest.approx(5.0)
    assert metrics["actor/pg_loss"] == pytest.approx(loss.item())
    # gradient: d l / d logp = -A r / N where unclipped, 0 where clipped (or dual-clipped)
    (grad,) = torch.autograd.grad(loss, logp)
    want = [0.0 if clip or (a < 0 and r > 3.0) else -a * r / 6 for a, r, _, clip in CASES]
    torch.testing.assert_close(grad[0], torch.tensor(want), atol=1e-6, rtol=0)
    # without dual clip the last token's loss is -A r = 10
    loss_nc, m_nc = ppo_clip_loss(old, logp, adv, mask, config=PPOClipConfig(clip_eps=0.2))
    assert loss_nc.item() == pytest.approx((sum(expected) - 6.0 + 10.0) / 6, abs=1e-6)
    assert m_nc["actor/pg_clipfrac_lower"] == 0.0


def test_separate_low_high_clip_and_masking():
    cases = [(+1.0, 1.5, -1.3, True), (-1.0, 0.5, 0.9, True), (+1.0, 9.0, 0.0, False)]
    old, logp, adv, mask = _tensors(cases)
    mask[0, 2] = False  # outside the response: ignored
    loss, metrics = ppo_clip_loss(old, logp, adv, mask, config=PPOClipConfig(clip_eps_low=0.1, clip_eps_high=0.3))
    assert loss.item() == pytest.approx((-1.3 + 0.9) / 2, abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == 1.0
    assert metrics["actor/ppo_ratio_max"] == pytest.approx(1.5)


def test_seq_mean_token_mean():
    old = torch.zeros(2, 3)
    logp = torch.zeros(2, 3)  # ratio 1: token loss = -A
    adv = torch.tensor([[1.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    tm, _ = ppo_clip_loss(old, logp, adv, mask, "token-mean")
    sm, _ = ppo_clip_loss(old, logp, adv, mask, "seq-mean-token-mean")
    assert tm.item() == pytest.approx(-(1 + 12) / 4)
    assert sm.item() == pytest.approx(-(1 + 4) / 2)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        ppo_clip_loss(old, logp, adv, mask, "token-sum")


def test_verl_actor_config_names():
    # verl's ActorConfig spells the ranges clip_ratio*; the loss reads them when verl calls it
    cfg = SimpleNamespace(
        clip_ratio=0.2, clip_ratio_low=0.1, clip_ratio_high=0.3, clip_ratio_c=3.0, global_batch_info={}
    )
    old, logp, adv, mask = _tensors([(+1.0, 1.5, -1.3, True)])
    loss, _ = get_policy_loss_fn(DARE_PPO_CLIP)(old, logp, adv, mask, "token-mean", cfg)
    assert loss.item() == pytest.approx(-1.3)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        PPOClipConfig(clip_ratio_c=1.0)


def test_k3_kl():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    kl = k3_kl(a, b)
    assert bool((kl > 0).all())
    assert bool((k3_kl(a, a) == 0).all())
    # ref - logp = 1: e - 1 - 1
    assert k3_kl(torch.zeros(1), torch.ones(1)).item() == pytest.approx(math.e - 2)
    mask = torch.ones(4, 7, dtype=torch.bool)
    loss, metrics = kl_loss(a, b, mask)
    assert loss.item() == pytest.approx(kl.mean().item()) and metrics["actor/kl"] == pytest.approx(kl.mean().item())


def test_rl_loss_registry_and_arguments():
    assert get_policy_loss_fn(DARE_PPO_CLIP) is ppo_clip_loss
    old, logp, adv, mask = _tensors(CASES[:2])
    with pytest.raises(ValueError, match="ref_log_prob"):
        rl_loss(old, logp, adv, mask, beta=0.1)
    with pytest.raises(KeyError, match="unknown policy loss"):
        rl_loss(old, logp, adv, mask, loss_name="dare_ppo_clp")
    ref = logp.detach() + 1.0
    loss, metrics = rl_loss(old, logp, adv, mask, ref_log_prob=ref, beta=0.5)
    pg, _ = ppo_clip_loss(old, logp, adv, mask)
    kl, _ = kl_loss(logp, ref, mask)
    assert loss.item() == pytest.approx(pg.item() + 0.5 * kl.item())
    assert metrics["actor/loss"] == pytest.approx(loss.item()) and metrics["actor/kl"] > 0


@pytest.mark.parametrize(
    ("family", "name"), [("llada", "coupled"), ("dream", "coupled"), ("sdar", "coupled"), ("sdar", "d1")]
)
def test_first_inner_iteration_is_plain_policy_gradient(family, name):
    model = tiny(family, V).eval()
    ref = copy.deepcopy(model)
    batch = make_rl_batch()
    resp = batch["response_mask"]
    est = build_estimator(name)
    plan = est.sample(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        old = est.logp(model, batch, plan)
        ref_logp = est.logp(ref, batch, plan)
    assert torch.equal(ref_logp, old)  # same plan, same weights: reference == actor exactly
    adv = torch.tensor([1.0, -0.5, 2.0])[:, None] * resp  # [B, L]
    logp = est.logp(model, batch, plan)
    loss, metrics = rl_loss(old, logp, adv, resp, ref_log_prob=ref_logp, beta=0.04, config=PPOClipConfig(clip_eps=0.5))
    assert torch.equal(logp.detach(), old)
    assert metrics["actor/ppo_ratio_mean"] == 1.0
    assert metrics["actor/ppo_ratio_min"] == 1.0 and metrics["actor/ppo_ratio_max"] == 1.0
    assert metrics["actor/pg_clipfrac"] == 0.0
    assert metrics["actor/kl"] == 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    plain = -(adv * est.logp(model, batch, plan) * resp).sum() / resp.sum()  # -mean_i A_i logp_i
    plain_grads = torch.autograd.grad(plain, params)
    for g1, g2 in zip(grads, plain_grads):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
