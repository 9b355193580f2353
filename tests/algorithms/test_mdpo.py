"""MDPO: the step advantages on a hand-computed case and their defining property (a step is
credited for the reward it changed, never for earlier steps), the step loss by hand, and a tiny
model learning with them on a step-recording rollout."""

import math

import numpy as np
import pytest
import torch
from rl_toy import V, target_fraction  # noqa: I001  (pytest puts this folder on sys.path)

from dare.algorithms.mdpo import (
    mdpo_step_advantages,
    mdpo_step_log_prob,
    mdpo_step_loss,
    raw_step_advantages,
    select_train_steps,
)
from dare.models import aligned_logits, tiny
from dare.sampling.ops import gumbel_argmax, token_probability


def test_step_advantages_on_a_hand_computed_case():
    r = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    # reward change + 1: [1, 2, 1], [1, 1, 2]; mean future reward: [1, 1, 1], [0.5, 1, 1]
    torch.testing.assert_close(raw_step_advantages(r), torch.tensor([[2.0, 3.0, 2.0], [1.5, 2.0, 3.0]]))
    adv = mdpo_step_advantages(r, [0, 0])
    # per step over the group of 2: mean (1.75, 2.5, 2.5), unbiased std (0.5, 1, 1) / sqrt(2)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[0.25 / (0.5 * s + 1e-4), 0.5 / (s + 1e-4), -0.5 / (s + 1e-4)]])
    torch.testing.assert_close(adv, torch.cat([expected, -expected]))
    # a group of one has no baseline
    assert mdpo_step_advantages(r, [0, 1]).abs().max() == 0
    # training steps: largest sum of |A| first (step 0 is the smallest here)
    assert sorted(select_train_steps(adv, 2).tolist()) == [1, 2]


def test_a_step_is_credited_for_the_reward_it_changed_not_for_earlier_steps():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(8, 6, generator=g)
    uid = np.repeat(np.arange(2), 4)
    base = mdpo_step_advantages(r, uid)
    moved = r.clone()
    moved[:, :2] = torch.rand(8, 2, generator=g)  # change what steps 0 and 1 predicted
    again = mdpo_step_advantages(moved, uid)
    torch.testing.assert_close(again[:, 3:], base[:, 3:])  # steps >= 3 see r_{t-1} and later only
    assert (again[:, :3] - base[:, :3]).abs().max() > 1e-3
    # an outcome reward (every step scored like the final one) puts one advantage on all steps
    # after the first; MDPO's first step also carries the jump from r_{-1} = 0
    flat = mdpo_step_advantages(r[:, -1:].expand(8, 6), uid)
    torch.testing.assert_close(flat[:, 1:], flat[:, 1:2].expand(8, 5))


def test_step_loss_on_a_hand_computed_case():
    lp = torch.zeros(2, 3, requires_grad=True)
    masked = torch.tensor([[True, True, False], [True, False, False]])
    conf = torch.tensor([[0.5, 1.0, 1.0], [0.25, 1.0, 1.0]])
    adv = torch.tensor([1.0, -2.0])
    # ratio 1: lambda = (3/2, 3/1); sum l c = -(1 * 1.5 * (0.5 + 1)) + (2 * 3 * 0.25) = -0.75; / 3 masked
    loss, m = mdpo_step_loss(lp.detach(), lp, adv, masked, conf, gen_length=3)
    assert loss.item() == pytest.approx(-0.75 / 3, rel=1e-4)
    assert m["actor/lambda_t_mean"] == pytest.approx(2.25, rel=1e-4)
    # row 0 token 0 at ratio 2 is clipped to 1.2 (A > 0); row 1 (A < 0) at ratio 0.5 clips to 0.8
    old = torch.tensor([[-math.log(2.0), 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    loss, m = mdpo_step_loss(old, lp, adv, masked, conf, gen_length=3)
    total = -(1.2 * 1.5 * 0.5 + 1.0 * 1.5 * 1.0) + 2 * 0.8 * 3 * 0.25
    assert loss.item() == pytest.approx(total / 3, rel=1e-4)
    assert m["actor/pg_clipfrac"] == pytest.approx(2 / 3)
    # beta weighs (ref - logp)^2 / 2 on the same confidence-weighted mean
    ref = torch.full((2, 3), 0.5)
    loss, _ = mdpo_step_loss(lp.detach(), lp, adv, masked, conf, 3, beta=0.1, ref_log_prob=ref)
    assert loss.item() == pytest.approx((-0.75 + 0.1 * 0.125 * (0.5 + 1 + 0.25)) / 3, rel=1e-4)


PROMPT = torch.tensor([[5, 6, 7], [8, 9, 11], [12, 13, 14]])


@torch.no_grad()
def step_rollout(model, G: int, L: int, gen: torch.Generator):
    """LLaDA-style low-confidence decoding, one token per step, recording every step's state, full
    prediction x0_t and its confidences (what an MDPO rollout keeps)."""
    spec = model.diffusion_spec()
    prompt = PROMPT.repeat_interleave(G, 0)  # [N, P]
    N, P = prompt.shape
    x = torch.full((N, L), spec.mask_token_id)
    states, preds, confs = [], [], []
    for _ in range(L):
        logits = aligned_logits(model(torch.cat([prompt, x], 1)).logits, spec)[:, P:].double()  # [N, L, V]
        logits[..., spec.mask_token_id] = -math.inf
        x0 = gumbel_argmax(logits, 1.0, gen)
        conf = token_probability(logits, x0)
        masked = x == spec.mask_token_id
        states.append(x.clone())
        preds.append(torch.where(masked, x0, x))
        confs.append(torch.where(masked, conf, 0.0).float())
        pick = torch.where(masked, conf, -1.0).argmax(-1)  # the most confident masked position
        x[torch.arange(N), pick] = x0[torch.arange(N), pick]
    return prompt, torch.stack(states, 1), torch.stack(preds, 1), torch.stack(confs, 1)  # [N, S, L]


@pytest.mark.slow
def test_mdpo_learns_the_toy_reward():
    model = tiny("llada", V, seed=0)
    spec = model.diffusion_spec()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    G, L = 4, 4
    uid = np.repeat(np.arange(len(PROMPT)), G)
    final = []
    for _ in range(20):
        model.eval()
        prompt, states, preds, confs = step_rollout(model, G, L, gen)
        ones = torch.ones_like(states[:, 0], dtype=torch.bool)
        step_r = torch.stack([target_fraction(preds[:, t], ones) for t in range(L)], 1)  # [N, S]
        final.append(float(step_r[:, -1].mean()))
        adv = mdpo_step_advantages(step_r, uid)
        model.train()
        opt.zero_grad()
        for t in select_train_steps(adv, 2).tolist():
            masked = states[:, t] == spec.mask_token_id
            lp = mdpo_step_log_prob(model, spec, prompt, torch.ones_like(prompt), states[:, t], preds[:, t], 1.0)
            loss, _ = mdpo_step_loss(lp.detach(), lp, adv[:, t], masked, confs[:, t], L)
            loss.backward()
        opt.step()
    # measured (2-core CPU, seed 0): see docs/algorithms/mdpo.md
    assert sum(final[-5:]) / 5 > sum(final[:5]) / 5 + 0.2, final
