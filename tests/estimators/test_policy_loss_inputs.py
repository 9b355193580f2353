"""`verl_policy_loss`: a loss written once as `fn(PolicyLossInputs, config)` behaves as a function
of verl's `PolicyLossFn` signature, positionally and by keyword (verl's actor), and
`PolicyLossInputs.apply` calls a registered loss on changed inputs."""

import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from dare.algorithms.bgpo import bgpo_log_ratio, bgpo_loss
from dare.diffusion.rl_losses import DARE_PPO_CLIP, PPOClipConfig, ppo_clip_loss
from dare.diffusion.rl_registry import PolicyLossInputs, verl_policy_loss


def inputs(seed: int = 0) -> PolicyLossInputs:
    g = torch.Generator().manual_seed(seed)
    B, L = 3, 5
    mask = torch.arange(L)[None, :] < torch.tensor([5, 3, 1])[:, None]  # [B, L]
    return PolicyLossInputs(
        old_log_prob=-torch.rand(B, L, generator=g, dtype=torch.float64),
        log_prob=-torch.rand(B, L, generator=g, dtype=torch.float64),
        advantages=torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64).expand(B, L),
        response_mask=mask,
        loss_agg_mode="seq-mean-token-mean",
        rollout_is_weights=torch.rand(B, L, generator=g, dtype=torch.float64),
    )


def test_the_wrapper_passes_every_argument_in_verl_order_and_by_keyword():
    seen = []

    @verl_policy_loss
    def probe(x: PolicyLossInputs, config=None):
        """probe's doc"""
        seen.append((x, config))
        return x.log_prob.sum(), {}

    x = inputs()
    probe(x.old_log_prob, x.log_prob, x.advantages, x.response_mask, x.loss_agg_mode, "cfg", x.rollout_is_weights)
    probe(
        old_log_prob=x.old_log_prob, log_prob=x.log_prob, advantages=x.advantages, response_mask=x.response_mask,
        loss_agg_mode=x.loss_agg_mode, config="cfg", rollout_is_weights=x.rollout_is_weights,
    )  # fmt: skip
    probe(x.old_log_prob, x.log_prob, x.advantages, x.response_mask)  # verl's defaults
    assert seen[0] == seen[1] == (x, "cfg")
    assert seen[2] == (PolicyLossInputs(x.old_log_prob, x.log_prob, x.advantages, x.response_mask), None)
    assert seen[2][0].loss_agg_mode == "token-mean" and seen[2][0].rollout_is_weights is None
    assert probe.__name__ == "probe" and probe.__doc__ == "probe's doc"


def test_ppo_clip_is_registered_in_verl_as_the_wrapped_function():
    assert get_policy_loss_fn(DARE_PPO_CLIP) is ppo_clip_loss
    x, cfg = inputs(), PPOClipConfig(clip_eps=0.2, clip_ratio_c=3.0)
    by_keyword = ppo_clip_loss(
        old_log_prob=x.old_log_prob, log_prob=x.log_prob, advantages=x.advantages, response_mask=x.response_mask,
        loss_agg_mode=x.loss_agg_mode, config=cfg, rollout_is_weights=x.rollout_is_weights,
    )  # fmt: skip
    via_apply = x.apply(ppo_clip_loss, cfg)
    assert torch.equal(by_keyword[0], via_apply[0]) and by_keyword[1] == via_apply[1]


def test_apply_replaces_the_named_fields_only():
    x, cfg = inputs(1), PPOClipConfig(clip_eps=0.2)
    zeros = torch.zeros_like(x.log_prob)
    # PPO on (0, log_prob - old_log_prob) is PPO on (old_log_prob, log_prob): the ratio is the same
    shifted, _ = x.apply(ppo_clip_loss, cfg, old_log_prob=zeros, log_prob=x.log_prob - x.old_log_prob)
    plain, _ = x.apply(ppo_clip_loss, cfg)
    torch.testing.assert_close(shifted, plain)
    # BGPO's loss is PPO clip of exp(bgpo_log_ratio)
    ratio = bgpo_log_ratio(x.log_prob, x.old_log_prob, x.advantages)
    expected, _ = x.apply(ppo_clip_loss, cfg, old_log_prob=zeros, log_prob=ratio)
    got, _ = x.apply(bgpo_loss, cfg)
    torch.testing.assert_close(got, expected)
