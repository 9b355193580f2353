"""The [x_t ; x_0] block-diffusion mask: structural invariants and what it does inside SDAR."""

import torch

from dare.diffusion.sft import block_diffusion_attention_mask, padding_position_ids
from dare.models import tiny

V = 64


def _layout(block_size: int = 4):
    """Two rows of length 14: row 0 has 3 left pads, row 1 none; positions from the padding."""
    L = 14
    valid = torch.ones(2, L, dtype=torch.bool)
    valid[0, :3] = False
    pos = padding_position_ids(valid)
    return pos, valid, block_size


def test_shape_and_dtype():
    pos, valid, bs = _layout()
    m = block_diffusion_attention_mask(pos, valid, bs)
    assert m.shape == (2, 1, 28, 28) and m.dtype == torch.bool


def test_invariants():
    pos, valid, bs = _layout()
    m = block_diffusion_attention_mask(pos, valid, bs)[:, 0]  # [B, 2L, 2L]
    B, L = pos.shape
    blk = pos // bs
    for b in range(B):
        for q in range(2 * L):
            for k in range(2 * L):
                qi, ki = q % L, k % L
                q_noisy, k_noisy = q < L, k < L
                real = bool(valid[b, qi]) and bool(valid[b, ki])
                seen = bool(m[b, q, k])
                if not real:
                    # padding is never visible, and a padded query sees only itself
                    assert seen == (q == k), (b, q, k)
                    continue
                bq, bk = int(blk[b, qi]), int(blk[b, ki])
                if q_noisy and k_noisy:
                    # a noisy token sees its own noisy block (bidirectionally), no other noisy block
                    assert seen == (bq == bk), (b, q, k)
                elif q_noisy and not k_noisy:
                    # a noisy token sees strictly earlier clean blocks, never its own clean copy
                    assert seen == (bk < bq), (b, q, k)
                elif not q_noisy and k_noisy:
                    # the clean stream never sees the noisy stream
                    assert not seen, (b, q, k)
                else:
                    # clean tokens are block-causal
                    assert seen == (bk <= bq), (b, q, k)
    # no query ever sees a later block, in either half
    blk2 = torch.cat([blk, blk], 1)
    later = blk2[:, None, :] > blk2[:, :, None]
    assert not bool((m & later & ~torch.eye(2 * L, dtype=torch.bool)).any())
    # every row sees at least one key (no NaN in softmax)
    assert bool(m.any(-1).all())


def test_blocks_follow_positions_not_indices():
    """Left padding shifts the blocks: row 0's first real token is position 0, block 0."""
    pos, valid, bs = _layout()
    m = block_diffusion_attention_mask(pos, valid, bs)[:, 0]
    L = pos.shape[1]
    # row 0: index 3..6 are positions 0..3 (block 0): the noisy copy of index 3 sees index 6, not 7
    assert bool(m[0, 3, 6]) and not bool(m[0, 3, 7])
    # and the clean copy of index 7 (position 4, block 1) sees the clean block 0 and itself
    assert bool(m[0, L + 7, L + 3]) and bool(m[0, L + 7, L + 10]) and not bool(m[0, L + 7, L + 11])


def _sdar_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pos, valid, bs = _layout()
    B, L = pos.shape
    x0 = torch.randint(0, V - 2, (B, L), generator=g)
    x0[~valid] = V - 2
    xt = torch.where(torch.rand(B, L, generator=g) < 0.5, torch.full_like(x0, V - 1), x0)
    return x0, xt, pos, valid, bs


def test_sdar_clean_half_equals_plain_block_causal_forward():
    """The x_0 half of the [x_t ; x_0] forward is exactly SDAR's default forward on x_0 alone: the
    noisy half never leaks into the clean stream."""
    model = tiny("sdar", V).eval()
    x0, xt, pos, valid, bs = _sdar_inputs()
    L = x0.shape[1]
    mask = block_diffusion_attention_mask(pos, valid, bs)
    with torch.no_grad():
        both = model(torch.cat([xt, x0], 1), attention_mask=mask, position_ids=torch.cat([pos, pos], 1)).logits
        plain = model(x0, attention_mask=valid.long()).logits  # the model's own default rule
    torch.testing.assert_close(both[:, L:][valid], plain[valid], atol=1e-5, rtol=1e-5)


def test_sdar_noisy_block_ignores_own_clean_copy_and_later_blocks():
    """Changing x_0 at block >= k (both halves: clean copy and later noisy blocks) leaves the noisy
    logits of block k unchanged; changing an earlier clean block changes them."""
    model = tiny("sdar", V).eval()
    x0, xt, pos, valid, bs = _sdar_inputs()
    L = x0.shape[1]
    mask = block_diffusion_attention_mask(pos, valid, bs)
    both_pos = torch.cat([pos, pos], 1)
    blk = pos // bs
    k = 1

    def noisy_logits(xt_, x0_):
        with torch.no_grad():
            return model(torch.cat([xt_, x0_], 1), attention_mask=mask, position_ids=both_pos).logits[:, :L]

    ref = noisy_logits(xt, x0)
    sel = (blk == k) & valid
    late = (blk >= k) & valid
    x0_late = torch.where(late, (x0 + 5) % (V - 2), x0)
    xt_later = torch.where((blk > k) & valid, (xt + 3) % (V - 2), xt)
    torch.testing.assert_close(noisy_logits(xt_later, x0_late)[sel], ref[sel], atol=1e-5, rtol=1e-5)
    x0_early = torch.where((blk < k) & valid, (x0 + 5) % (V - 2), x0)
    assert not torch.allclose(noisy_logits(xt, x0_early)[sel], ref[sel], atol=1e-4)
