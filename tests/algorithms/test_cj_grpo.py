"""CJ-GRPO: the per-step loss on a hand-computed case, the trajectory replay against the
sampler's own step probabilities, the algorithm as the actor runs it, and learning."""

import math

import pytest
import torch
from rl_toy import PROMPTS, V, algorithm, rl_batch, train_toy  # noqa: I001  (pytest puts this folder on sys.path)

from dare.algorithms.cj_grpo import cj_grpo_loss, replay_log_prob, step_mean_weights
from dare.diffusion.rl_losses import PPOClipConfig
from dare.models import tiny
from dare.sampling import SamplingConfig, generate

STEPS = torch.tensor([[-1, 0, 1, 1], [-1, 0, 0, 2]])  # column 0 is the prompt
MASK = STEPS >= 0
ADV = torch.tensor([[1.0], [-2.0]])


def test_step_weights_average_over_steps_of_per_step_token_means():
    w = step_mean_weights(STEPS, MASK)
    # step 0 has 3 tokens, step 1 has 2, step 2 has 1; K = 3
    torch.testing.assert_close(w, torch.tensor([[0, 1 / 9, 1 / 6, 1 / 6], [0, 1 / 9, 1 / 9, 1 / 3]]))
    assert float(w.sum()) == pytest.approx(1.0)


def test_loss_on_a_hand_computed_case():
    lp = torch.zeros(2, 4, requires_grad=True)
    cfg = PPOClipConfig(clip_eps=0.5)
    # ratio 1: L = -1/3 [(1 - 2 - 2)/3 + (1 + 1)/2 + (-2)/1] = 2/3
    loss, m = cj_grpo_loss(lp.detach(), lp, ADV, STEPS, MASK, config=cfg)
    assert loss.item() == pytest.approx(2 / 3)
    assert m["actor/trajectory_steps"] == 3.0
    # token (0, 2) with ratio 2 and A = 1 is clipped to 1.5: step 1's mean becomes 1.25
    old = torch.zeros(2, 4)
    old[0, 2] = -math.log(2.0)
    loss, m = cj_grpo_loss(old, lp, ADV, STEPS, MASK, config=cfg)
    assert loss.item() == pytest.approx(-(-1 + 1.25 - 2) / 3)
    assert m["actor/pg_clipfrac"] == pytest.approx(1 / 6)
    # the k3 KL enters with the same per-step weights: ref = logp + log 2 on token (1, 3) only
    ref = torch.zeros(2, 4)
    ref[1, 3] = math.log(2.0)
    loss, m = cj_grpo_loss(lp.detach(), lp, ADV, STEPS, MASK, config=cfg, ref_log_prob=ref, beta=0.04)
    kl = (2.0 - math.log(2.0) - 1.0) / 3  # k3 of that token, weight 1/3
    assert m["actor/kl"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(2 / 3 + 0.04 * kl)


# the paper's samplers: ASS (8 tokens in 3 steps: 1, 2, 5) with EOSER; the replay scores the model's
# probabilities, which the rollout records unscaled by EOSER's factor
ASS_EOSER = dict(steps=3, schedule="ascending", eos_gamma=(0.01, 1.0))


@pytest.mark.parametrize(
    ("family", "extra"),
    [("llada", {}), ("dream", {}), ("sdar", {}), ("sdar", {"block_length": "two_model_blocks"}), ("llada", ASS_EOSER)],
    ids=["llada", "dream", "sdar", "sdar_two_model_blocks", "llada_ass_eoser"],
)
def test_trajectory_replay_reproduces_the_samplers_step_probabilities(family, extra):
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    block = spec.block_size or 8  # SDAR decodes its own blocks (block-causal), the others one block
    if extra.get("block_length") == "two_model_blocks":  # a decoding block spanning two model blocks:
        extra = {"block_length": 2 * block}  # the later one sees the earlier one's state, not its final text
    cfg = SamplingConfig(
        **{"algorithm": family, "gen_length": 8, "steps": 8, "block_length": block, "temperature": 1.0,
           "num_generations": 4, **extra}
    )  # fmt: skip
    rollout = generate(model, PROMPTS, cfg, generator=torch.Generator().manual_seed(0))
    batch = rl_batch(rollout)
    with torch.no_grad():
        lp = replay_log_prob(model, spec, batch, temperature=1.0)  # [B, T]
    P = rollout.prompt_ids.shape[1]
    full = rollout.response_mask.all(-1)  # rows that never hit an end id: exact replay
    assert int(full.sum()) >= 5
    if extra.get("schedule"):  # the trajectory followed the ascending schedule
        assert all(torch.bincount(rollout.decode_step[n]).tolist() == [1, 2, 5] for n in torch.nonzero(full)[:, 0])
    sampled = rollout.confidence.log()[full]  # the sampler's log p of each token when committed
    torch.testing.assert_close(lp[:, P:][full], sampled.float(), atol=1e-5, rtol=0)
    # it is the trajectory that matters: the same tokens replayed in another order differ
    batch["decode_step"][:, P:] = batch["decode_step"][:, P:].flip(-1)
    with torch.no_grad():
        other = replay_log_prob(model, spec, batch, temperature=1.0)
    assert (other[:, P:][full] - sampled.float()).abs().max() > 1e-2


def test_algorithm_on_a_rollout_batch_ratio_one_then_old_and_reference_match():
    import contextlib
    import copy

    model = tiny("llada", V).eval()
    ref = copy.deepcopy(model)
    cfg = SamplingConfig(algorithm="llada", gen_length=4, steps=4, block_length=4, temperature=1.0, num_generations=3)
    batch = rl_batch(generate(model, PROMPTS, cfg, generator=torch.Generator().manual_seed(1)))
    algo = algorithm("cj_grpo", model.diffusion_spec(), mu=2)
    assert (algo.args.beta, algo.args.clip_eps, algo.args.advantage) == (0.04, 0.5, "grpo_mean")
    algo.check_batch(batch)
    updates = algo.prepare(model, lambda: contextlib.nullcontext(ref), batch)
    assert len(updates) == 2
    torch.testing.assert_close(updates[0]["old_log_prob"], updates[0]["ref_log_prob"])
    loss, m = algo.compute_loss(model, updates[0])
    assert m["actor/ppo_ratio_mean"] == pytest.approx(1.0) and m["actor/kl"] == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    del batch["decode_step"]
    with pytest.raises(KeyError, match=r"cj_grpo: the batch lacks \['decode_step'\]"):
        algo.check_batch(batch)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_cj_grpo_learns_the_toy_reward(family):
    rewards = train_toy("cj_grpo", family, steps=20, beta=0.0)
    # measured (2-core CPU, seed 0): see docs/algorithms/cj_grpo.md
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
