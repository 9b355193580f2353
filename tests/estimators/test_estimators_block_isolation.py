"""Block attention (SDAR): a response token never sees a later block nor another noisy block."""

import pytest
import torch
from rl_est_helpers import V, make_rl_batch

from dare.diffusion.estimators import build_estimator, view_logp
from dare.models import tiny

BS = 4  # tiny SDAR block size


def blocks_of(batch, spec):
    """Block index of every completion column (the response starts on a block boundary): [L]."""
    L = batch["input_ids"].shape[1]
    return torch.tensor([-1] * 6 + [(i - 6) // spec.block_size for i in range(6, L)])  # P = 6


@pytest.mark.parametrize("name", ["d1", "coupled"])
def test_later_block_tokens_do_not_change_earlier_blocks(name):
    model = tiny("sdar", V).eval()
    spec = model.diffusion_spec()
    assert spec.block_size == BS
    batch = make_rl_batch(prompt_lens=(3, 6), resp_lens=(12, 12), R=12)  # 3 response blocks each
    est = build_estimator(name)
    plan = est.sample(batch, torch.Generator().manual_seed(0))
    blk = blocks_of(batch, spec)
    changed = {k: v.clone() for k, v in batch.items()}
    later = blk == 2
    changed["input_ids"][:, later] = (changed["input_ids"][:, later] + 1) % (V - 2)
    with torch.no_grad():
        a = view_logp(model, batch, plan)  # [B, K, L]
        b = view_logp(model, changed, plan)
    earlier = (blk >= 0) & (blk < 2)
    torch.testing.assert_close(a[:, :, earlier], b[:, :, earlier], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, :, later], b[:, :, later])  # the change is seen where it may be


def test_noisy_blocks_do_not_see_each_other():
    model = tiny("sdar", V).eval()
    batch = make_rl_batch(prompt_lens=(3, 6), resp_lens=(12, 12), R=12)
    est = build_estimator("coupled")
    plan = est.sample(batch, torch.Generator().manual_seed(0))
    blk = blocks_of(batch, model.diffusion_spec())
    # flip the masks of block 1 in the partial views: only block 1's predictions may change
    flipped = plan.view_masks.clone()
    in_b1 = blk == 1
    flipped[:, 1:, in_b1] = ~flipped[:, 1:, in_b1]
    other = type(plan)(plan.prompt_mask, flipped, plan.weights, plan.t)
    with torch.no_grad():
        a = view_logp(model, batch, plan)
        b = view_logp(model, batch, other)
    rest = (blk == 0) | (blk == 2)
    torch.testing.assert_close(a[:, :, rest], b[:, :, rest], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 1:, in_b1], b[:, 1:, in_b1])
