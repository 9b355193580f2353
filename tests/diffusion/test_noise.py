"""Forward noising: masks only on eligible positions, rates match p_mask, seeds reproduce."""

import pytest
import torch

from dare.diffusion.noise import (
    apply_mask,
    bernoulli_mask,
    block_forward_noise,
    block_ids,
    complementary_masks,
    forward_noise,
    mask_exact_count,
    sample_block_p_mask,
    sample_p_mask,
    stratified_mask_counts,
)

MASK = 63


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _eligible(B: int = 8, L: int = 32) -> torch.Tensor:
    """Rows with a prompt of varying length (ineligible) then an answer (eligible)."""
    starts = torch.arange(B) % (L // 2)
    return torch.arange(L)[None, :] >= starts[:, None]  # [B, L]


def test_sample_p_mask_range_and_mean():
    p = sample_p_mask(20000, _gen(0), eps=1e-3)
    assert p.shape == (20000,)
    assert float(p.min()) >= 1e-3 and float(p.max()) <= 1.0
    # p = (1 - eps) t + eps with t ~ U(0, 1): mean (1 + eps) / 2, sd of the mean ~ 0.002
    assert abs(float(p.mean()) - (1 + 1e-3) / 2) < 0.01
    with pytest.raises(ValueError):
        sample_p_mask(4, _gen(0), eps=1.0)


def test_forward_noise_masks_only_eligible_and_replaces_with_mask_id():
    ids = torch.randint(0, 60, (8, 32), generator=_gen(1))
    eligible = _eligible()
    for seed in range(20):
        noise = forward_noise(ids, eligible, MASK, _gen(seed))
        assert not bool((noise.mask & ~eligible).any())
        assert torch.equal(noise.noisy_ids[noise.mask], torch.full_like(ids[noise.mask], MASK))
        assert torch.equal(noise.noisy_ids[~noise.mask], ids[~noise.mask])
        assert noise.p_mask.shape == ids.shape
        # one p_mask per sequence
        assert torch.equal(noise.p_mask, noise.p_mask[:, :1].expand_as(noise.p_mask))


def test_empirical_mask_rate_matches_p_mask():
    B, L = 3, 20000
    eligible = torch.ones(B, L, dtype=torch.bool)
    eligible[:, ::2] = False  # half the positions are never eligible
    p = torch.tensor([0.1, 0.5, 0.9])
    mask = bernoulli_mask(eligible, p, _gen(0))
    assert not bool((mask & ~eligible).any())
    rate = mask.sum(-1).float() / eligible.sum(-1).float()
    # 10000 Bernoulli draws per row: sd <= 0.005
    torch.testing.assert_close(rate, p, atol=0.02, rtol=0)
    # through forward_noise with a given p_mask as well
    noise = forward_noise(torch.zeros(B, L, dtype=torch.long), eligible, MASK, _gen(1), p_mask=p)
    torch.testing.assert_close(noise.mask.sum(-1).float() / eligible.sum(-1).float(), p, atol=0.02, rtol=0)


def test_same_seed_same_mask_different_seed_differs():
    ids = torch.randint(0, 60, (8, 32), generator=_gen(1))
    eligible = _eligible()
    a = forward_noise(ids, eligible, MASK, _gen(7))
    b = forward_noise(ids, eligible, MASK, _gen(7))
    c = forward_noise(ids, eligible, MASK, _gen(8))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.p_mask, b.p_mask)
    assert not torch.equal(a.mask, c.mask)
    # the global RNG is not touched
    state = torch.get_rng_state()
    forward_noise(ids, eligible, MASK, _gen(9))
    assert torch.equal(state, torch.get_rng_state())


def test_apply_mask():
    ids = torch.tensor([[1, 2, 3]])
    out = apply_mask(ids, torch.tensor([[False, True, False]]), MASK)
    assert out.tolist() == [[1, MASK, 3]]


def test_mask_exact_count():
    eligible = _eligible(6, 16)
    counts = torch.tensor([0, 1, 5, 12, 16, 100])
    for seed in range(10):
        mask = mask_exact_count(eligible, counts, _gen(seed))
        assert not bool((mask & ~eligible).any())
        expected = torch.minimum(counts, eligible.sum(-1))
        assert torch.equal(mask.sum(-1), expected)
    a = mask_exact_count(eligible, counts, _gen(3))
    assert torch.equal(a, mask_exact_count(eligible, counts, _gen(3)))
    assert not torch.equal(a, mask_exact_count(eligible, counts, _gen(4)))


def test_mask_exact_count_is_uniform_over_positions():
    eligible = torch.ones(4000, 8, dtype=torch.bool)
    mask = mask_exact_count(eligible, torch.full((4000,), 2), _gen(0))
    # each position is chosen with probability 2/8
    torch.testing.assert_close(mask.float().mean(0), torch.full((8,), 0.25), atol=0.03, rtol=0)


def test_stratified_mask_counts():
    n = torch.tensor([0, 1, 7, 32])
    counts = stratified_mask_counts(n, 4, _gen(0))
    assert counts.shape == (4, 4)
    assert counts[0].tolist() == [0, 0, 0, 0]
    assert counts[1].tolist() == [1, 1, 1, 1]
    for row, length in zip(counts[2:], n[2:]):
        assert int(row.min()) >= 1 and int(row.max()) <= int(length)
    # with K = n the counts are a permutation of 1..n (stratified: every level once)
    full = stratified_mask_counts(torch.tensor([16, 16]), 16, _gen(1))
    for row in full:
        assert sorted(row.tolist()) == list(range(1, 17))
    # K = n / 4: consecutive counts are n / K apart (mod n)
    quarter = stratified_mask_counts(torch.tensor([32]), 4, _gen(2))[0]
    assert sorted(((quarter - quarter[0]) % 32).tolist()) == [0, 8, 16, 24]
    # the offset is random: over seeds it covers the whole range
    firsts = {int(stratified_mask_counts(torch.tensor([8]), 2, _gen(s))[0, 0]) for s in range(200)}
    assert firsts == set(range(1, 9))


def test_complementary_masks():
    eligible = _eligible(64, 256)
    t = torch.full((64,), 0.3)
    m1, m2 = complementary_masks(eligible, t, _gen(0))
    assert not bool((m1 & m2).any())
    assert torch.equal(m1 | m2, eligible)
    rate = m1.sum().float() / eligible.sum().float()
    assert abs(float(rate) - 0.3) < 0.02
    n1, n2 = complementary_masks(eligible, t, _gen(0))
    assert torch.equal(m1, n1) and torch.equal(m2, n2)


def test_block_ids_rule():
    pos = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5, 8]])
    assert block_ids(pos, 4).tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 2]]
    with pytest.raises(ValueError):
        block_ids(pos, 0)


def test_block_p_mask_constant_within_block_and_varies_across_blocks():
    B, L, bs = 4, 24, 4
    pos = torch.arange(L).expand(B, L)
    p = sample_block_p_mask(block_ids(pos, bs), _gen(0), eps=1e-3)
    assert p.shape == (B, L)
    per_block = p.view(B, L // bs, bs)
    assert torch.equal(per_block, per_block[..., :1].expand_as(per_block))
    assert per_block[..., 0].unique().numel() == B * L // bs  # independent draws
    assert float(p.min()) >= 1e-3


def test_block_forward_noise():
    B, L, bs = 4, 24, 4
    ids = torch.randint(0, 60, (B, L), generator=_gen(0))
    eligible = _eligible(B, L)
    pos = torch.arange(L).expand(B, L)
    a = block_forward_noise(ids, eligible, pos, bs, MASK, _gen(3))
    assert not bool((a.mask & ~eligible).any())
    assert torch.equal(a.noisy_ids, apply_mask(ids, a.mask, MASK))
    b = block_forward_noise(ids, eligible, pos, bs, MASK, _gen(3))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.p_mask, b.p_mask)
    # empirical rate per block matches that block's p
    big = torch.ones(2, 4 * 5000, dtype=torch.bool)
    pos = torch.arange(big.shape[1]).expand(2, -1)
    noise = block_forward_noise(torch.zeros_like(pos), big, pos, 5000, MASK, _gen(4))
    rate = noise.mask.view(2, 4, 5000).float().mean(-1)
    torch.testing.assert_close(rate, noise.p_mask.view(2, 4, 5000)[..., 0], atol=0.025, rtol=0)
