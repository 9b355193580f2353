"""MDPO: the step advantages on a hand-computed case and their defining property (a step is
credited for the reward it changed, never for earlier steps), the step loss by hand, a tiny
model learning with them on a step-recording rollout; the step replay equals the log-prob the
sampler drew each prediction with (LLaDA, Dream, SDAR), a step predicting only its own block; the
registered `mdpo` algorithm: its driver tensors, its per-step backward, its learning through dare's
recording sampler (`train_toy`, SDAR too), and what it refuses at recipe load. (The RL trainer's step-reward path: tests/trainer/test_rl_step_rewards.py.)"""

import math

import numpy as np
import pytest
import torch
import yaml
from rl_toy import V, add_step_rewards, algorithm, rl_batch, target_fraction, train_toy  # noqa: I001

from dare.algorithms.mdpo import (
    MDPO,
    mdpo_step_advantages,
    mdpo_step_log_prob,
    mdpo_step_loss,
    raw_step_advantages,
    select_train_steps,
)
from dare.cli import main
from dare.config import RecipeError, build_recipe
from dare.models import aligned_logits, tiny
from dare.sampling import SamplingConfig, engine, generate
from dare.sampling.engine import process_logits
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


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_the_step_replay_is_the_log_prob_the_sampler_drew_each_prediction_with(family, temperature, monkeypatch):
    # a recorded decode of 2 blocks x 4 steps, prompts of 3 and 2 tokens (padded, and not on an SDAR
    # block boundary); the sampler's own logits of every step are caught where the engine processes them
    seen = []

    def spy(*args):
        seen.append(process_logits(*args))
        return seen[-1]

    monkeypatch.setattr(engine, "process_logits", spy)
    model = tiny(family, V, seed=0).eval()
    spec, M = model.diffusion_spec(), V - 1
    cfg = SamplingConfig(algorithm=family, gen_length=8, steps=8, block_length=4, temperature=temperature,
                         num_generations=2, record_steps=True)  # fmt: skip
    out = generate(model, [[5, 6, 7], [8, 9]], cfg, generator=torch.Generator().manual_seed(0))
    state, pred, conf = (out.extras[k] for k in ("step_state", "step_prediction", "step_confidence"))
    # S = the schedule's 8 steps over both blocks: one record per sampler forward, then (a decode
    # that stopped early at EOS) the final response, with nothing to predict
    assert state.shape == (4, 8, 8) and 4 < len(seen) <= 8
    assert (state[:, len(seen) :] == pred[:, len(seen) :]).all() and (conf[:, len(seen) :] == 0).all()
    blocks = []
    for t in range(len(seen)):
        masked = state[:, t] == M
        predicted = masked & (pred[:, t] != M)  # what MDPO's loss counts
        first = int(predicted.any(0).nonzero()[0])
        lo = first - first % 4  # the block step t decodes
        blocks.append(lo)
        block = torch.zeros(8, dtype=torch.bool)
        block[lo : lo + 4] = True
        # the step predicts every mask of its block and nothing of a later block
        assert torch.equal(predicted, masked & block) and (conf[:, t][~predicted] == 0).all()
        with torch.no_grad():
            lp = mdpo_step_log_prob(model, spec, out.prompt_ids, out.prompt_mask, state[:, t], pred[:, t], temperature)
        sampler = (seen[t] / temperature).log_softmax(-1)  # [N, 4, V]: what the step drew from
        expected = torch.zeros(4, 8, dtype=torch.float64)
        expected[:, lo : lo + 4] = sampler.gather(-1, pred[:, t, lo : lo + 4, None])[..., 0]
        torch.testing.assert_close(lp.double()[predicted], expected[predicted], atol=1e-5, rtol=0)
        if temperature == 1.0:  # the recorded confidence is the sampler's probability at T = 1
            torch.testing.assert_close(lp.double()[predicted], conf[:, t].double().log()[predicted], atol=1e-5, rtol=0)
    assert blocks == sorted(blocks) and blocks[-1] == 4  # both blocks decoded, in order


# --- the registered algorithm -------------------------------------------------------------------


def test_group_tensors_are_the_step_advantages_and_the_batchs_top_steps():
    r = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    args = algorithm("mdpo", tiny("llada", V).diffusion_spec(), sample_train_steps=2).args
    extra, metrics = MDPO.group_tensors(args, {"step_rewards": r}, np.array([0, 0], dtype=object))
    torch.testing.assert_close(extra["step_advantages"], mdpo_step_advantages(r, [0, 0]))
    # the hand case above: steps 1 and 2 carry the largest |A|, the same for every row
    assert sorted(extra["train_steps"][0].tolist()) == [1, 2] and torch.equal(
        extra["train_steps"][0], extra["train_steps"][1]
    )
    assert metrics["mdpo/step_reward_first"] == 0.0 and metrics["mdpo/step_reward_last"] == 1.0


def _toy_batch(algo, model):
    cfg = SamplingConfig(
        algorithm="llada", gen_length=4, steps=4, temperature=1.0, num_generations=3, record_steps=True
    )
    rollout = generate(model, PROMPT.tolist(), cfg, generator=torch.Generator().manual_seed(1))
    return add_step_rewards(algo, rl_batch(rollout), rollout)


def test_per_step_backward_gives_the_gradient_of_the_mean_step_loss():
    model = tiny("llada", V, seed=0)
    algo = algorithm("mdpo", model.diffusion_spec(), sample_train_steps=3, sampling={"temperature": 1.0})
    batch = _toy_batch(algo, model)
    assert batch["train_steps"].shape == (len(batch["input_ids"]), 3) and batch["step_advantages"].abs().sum() > 0
    (update,) = algo.prepare(model, None, batch)
    loss, _ = algo.compute_loss(model, update)
    whole = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    parts, shares = [], []

    def backward(part, share):
        parts.append(torch.autograd.grad(part, list(model.parameters()), allow_unused=True))
        shares.append(share)

    total, _ = algo.loss_backward(model, update, backward)
    assert (
        len(parts) == 3 and sum(shares) == pytest.approx(1.0) and total.item() == pytest.approx(loss.item(), rel=1e-5)
    )
    for j, g in enumerate(whole):
        if g is not None:
            torch.testing.assert_close(sum(p[j] for p in parts), g, rtol=1e-4, atol=1e-7)


def test_mu_updates_score_the_old_policy_once():
    model = tiny("llada", V, seed=0)
    algo = algorithm("mdpo", model.diffusion_spec(), mu=2, sample_train_steps=2, sampling={"temperature": 1.0})
    updates = algo.prepare(model, None, _toy_batch(algo, model))
    assert len(updates) == 2 and updates[0]["old_log_prob"].shape == (9, 2, 4)
    loss, m = algo.compute_loss(model, updates[0])  # ratio 1 before any update: the plain policy gradient
    assert torch.isfinite(loss) and m["actor/pg_clipfrac"] == 0.0


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_the_registered_mdpo_learns_the_toy_reward(family):
    rewards = train_toy("mdpo", family, steps=20, sampling={"temperature": 1.0})
    # measured (2-core CPU, seed 0): see docs/algorithms/mdpo.md
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.3, rewards


def _recipe(family: str, **stage):
    return {
        "model": {"family": family, "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": 8},
        "eval": {"enabled": False},
        "stages": [{"kind": "rl", "algorithm": "mdpo", "steps": 1, "batch_size": 2, **stage}],
    }


@pytest.mark.parametrize(
    "family,stage,key,message",
    [
        ("llada", {"sample_train_steps": 0}, r"stages\[0\]\.sample_train_steps", ">= 1"),
        ("llada", {"sampling": {"threshold": 0.9}}, r"stages\[0\]\.sampling", "record_steps: a parallel-decoding rule"),
        (
            "llada",
            {"sampling": {"algorithm": "few_step", "steps": 4}},
            r"stages\[0\]\.sampling",
            "record_steps=True is not used",
        ),
        (
            "llada",
            {"rollout_backend": "sglang"},
            r"stages\[0\]\.rollout_backend",
            "does not record every denoising step",
        ),
    ],
)
def test_what_mdpo_cannot_train_is_refused_at_recipe_load(family, stage, key, message):
    with pytest.raises(RecipeError, match=key) as e:
        build_recipe(_recipe(family, **stage))
    assert e.match(message)


def test_an_sdar_mdpo_recipe_passes_the_dry_run(tmp_path, capsys):
    path = tmp_path / "mdpo_sdar.yaml"
    sampling = {"algorithm": "sdar", "steps": 8, "block_length": 4}
    raw = _recipe("sdar", sampling=sampling)
    raw["eval"]["sampling"] = sampling
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--dry-run"]) == 0
    assert f"# {path}: valid (1 stage(s))" in capsys.readouterr().out
