"""SFT losses against hand computations with fixed masks; Dream's shift; padding; registry."""

import math

import pytest
import torch

from dare.diffusion.noise import MaskedNoise, apply_mask, block_forward_noise, forward_noise
from dare.diffusion.sft import (
    SFT_OBJECTIVES,
    SftObjective,
    block_diffusion_logits,
    block_diffusion_noise,
    block_position_ids,
    masked_diffusion_logits,
    masked_diffusion_noise,
    sft_loss,
    sft_nll,
)
from dare.models import tiny

V = 64


def make_batch(prompt_lens=(4, 6, 2), resp_lens=(5, 8, 3), P=6, R=10, seed=0):
    """SFT batch as dare.data builds it: left-padded prompt (pad 62), response, EOS (62) padding.

    Returns input_ids [B, P+R], loss_mask [B, P+R] bool (response + EOS padding), attention_mask
    [B, P+R] (0 on left padding). A prompt length 0 with resp_len 0 gives an all-padding row.
    """
    g = torch.Generator().manual_seed(seed)
    eos = pad = V - 2
    B, L = len(prompt_lens), P + R
    ids = torch.full((B, L), pad, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    loss_mask = torch.zeros(B, L, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompt_lens, resp_lens)):
        if p == 0 and r == 0:
            continue  # padding row
        ids[b, P - p : P] = torch.randint(0, V - 2, (p,), generator=g)
        ids[b, P : P + r] = torch.randint(0, V - 2, (r,), generator=g)
        ids[b, P + r :] = eos
        attn[b, P - p :] = 1
        loss_mask[b, P:] = True
    return ids, loss_mask, attn


def fixed_noise(ids, loss_mask, mask_id, p=(0.3, 0.7, 0.5)):
    """A hand-chosen mask: every other answer position (offset by row), fixed p per row."""
    B, L = ids.shape
    pattern = (torch.arange(L)[None, :] + torch.arange(B)[:, None]) % 2 == 0
    mask = pattern & loss_mask
    p_mask = torch.tensor(p[:B], dtype=torch.float32)[:, None].expand(B, L)
    return MaskedNoise(apply_mask(ids, mask, mask_id), mask, p_mask)


def hand_loss(logits_fn, ids, loss_mask, noise, shift):
    """(1/B) sum_b (1/|y_b|) sum_{i masked} -log softmax(logits_{b, src(i)})[x_{b,i}] / p_b, with loops."""
    logits = logits_fn(noise.noisy_ids)  # [B, L, V]
    B, L = ids.shape
    total = 0.0
    for b in range(B):
        s = 0.0
        for i in range(L):
            if noise.mask[b, i]:
                src = i - 1 if shift else i  # Dream: the logits at i-1 predict token i
                logp = torch.log_softmax(logits[b, src].double(), -1)[ids[b, i]]
                s += -float(logp) / float(noise.p_mask[b, i])
        total += s / int(loss_mask[b].sum())
    return total / B


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_masked_loss_equals_hand_computation(family):
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    ids, loss_mask, attn = make_batch()
    noise = fixed_noise(ids, loss_mask, spec.mask_token_id)
    loss, metrics = sft_nll(model, ids, noise, loss_mask, attn, spec)
    with torch.no_grad():
        expected = hand_loss(
            lambda x: model(x, attention_mask=attn).logits, ids, loss_mask, noise, shift=family == "dream"
        )
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert metrics["actor/sft_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["actor/mask_ratio"] == pytest.approx(float(noise.mask.sum() / loss_mask.sum()))
    assert all(k.startswith("actor/") for k in metrics)


def test_dream_uses_previous_position_not_own():
    """The Dream loss differs from the same formula read at the own position (the shift matters)."""
    model = tiny("dream", V).eval()
    spec = model.diffusion_spec()
    ids, loss_mask, attn = make_batch()
    noise = fixed_noise(ids, loss_mask, spec.mask_token_id)
    with torch.no_grad():
        loss, _ = sft_nll(model, ids, noise, loss_mask, attn, spec)
        f = lambda x: model(x, attention_mask=attn).logits
        unshifted = hand_loss(f, ids, loss_mask, noise, shift=False)
        shifted = hand_loss(f, ids, loss_mask, noise, shift=True)
    assert math.isclose(float(loss), shifted, rel_tol=1e-5)
    assert not math.isclose(float(loss), unshifted, rel_tol=1e-3)


def test_dream_refuses_answer_without_preceding_token():
    model = tiny("dream", V)
    spec = model.diffusion_spec()
    ids, loss_mask, attn = make_batch(prompt_lens=(0, 3), resp_lens=(4, 4), P=3, R=5)  # row 0: no prompt
    with pytest.raises(ValueError, match="shift_logits"):
        sft_loss(model, ids, loss_mask, attn, spec, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_loss_with_generator_equals_loss_with_its_noise(family):
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    ids, loss_mask, attn = make_batch()
    loss_fn = sft_loss
    with torch.no_grad():
        a, _ = loss_fn(model, ids, loss_mask, attn, spec, torch.Generator().manual_seed(5))
        b, _ = loss_fn(model, ids, loss_mask, attn, spec, torch.Generator().manual_seed(5))
        c, _ = loss_fn(model, ids, loss_mask, attn, spec, torch.Generator().manual_seed(6))
        if spec.attention == "full":
            noise = forward_noise(ids, loss_mask, spec.mask_token_id, torch.Generator().manual_seed(5))
            d, _ = sft_nll(model, ids, noise, loss_mask, attn, spec)
        else:
            pos = block_position_ids(attn.bool(), loss_mask.bool(), spec.block_size)
            g = torch.Generator().manual_seed(5)
            noise = block_forward_noise(ids, loss_mask, pos, spec.block_size, spec.mask_token_id, g)
            d, _ = sft_nll(model, ids, noise, loss_mask, attn, spec)
    assert float(a) == float(b) == pytest.approx(float(d), rel=1e-6)
    assert float(a) != float(c)


def test_prompt_never_masked_and_eos_padding_trained():
    ids, loss_mask, attn = make_batch()
    hits_eos = False
    for seed in range(50):
        noise = forward_noise(ids, loss_mask, V - 1, torch.Generator().manual_seed(seed))
        assert not bool((noise.mask & ~loss_mask).any())  # prompt and left padding stay clean
        hits_eos |= bool((noise.mask & (ids == V - 2)).any())
    assert hits_eos  # the EOS padding after the response is part of the answer


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_loss_ignores_targets_outside_the_mask(family):
    """With the noised input fixed, changing the *targets* at prompt positions (and at unmasked
    answer positions) leaves the loss unchanged: only masked answer tokens are scored."""
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    ids, loss_mask, attn = make_batch()
    noise = fixed_noise(ids, loss_mask, spec.mask_token_id)
    changed = ids.clone()
    outside = ~noise.mask
    changed[outside] = (ids[outside] + 7) % (V - 2)
    assert bool((changed != ids)[~loss_mask & attn.bool()].all())  # every prompt target changed
    with torch.no_grad():
        a, _ = sft_nll(model, ids, noise, loss_mask, attn, spec)
        b, _ = sft_nll(model, changed, noise, loss_mask, attn, spec)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_block_loss_equals_hand_computation():
    """SDAR: rebuild [x_t ; x_0], positions and the three-part mask with loops, then the loss with loops."""
    model = tiny("sdar", V).eval()
    spec = model.diffusion_spec()
    bs = spec.block_size
    ids, loss_mask, attn = make_batch()
    B, L = ids.shape
    noise = fixed_noise(ids, loss_mask, spec.mask_token_id)
    # per-block p: replace the per-row p by a value depending on the block (response-aligned blocks)
    pos = block_position_ids(attn.bool(), loss_mask.bool(), bs)
    p_mask = 0.2 + 0.15 * (pos // bs).float()
    noise = MaskedNoise(noise.noisy_ids, noise.mask, p_mask)
    loss, _ = sft_nll(model, ids, noise, loss_mask, attn, spec)

    vis = torch.zeros(B, 1, 2 * L, 2 * L, dtype=torch.bool)
    for b in range(B):
        real = [int(attn[b, i % L]) == 1 for i in range(2 * L)]
        blk = [int(pos[b, i % L]) // bs for i in range(2 * L)]
        for q in range(2 * L):
            for k in range(2 * L):
                if not (real[q] and real[k]):
                    vis[b, 0, q, k] = q == k
                elif q < L and k < L:
                    vis[b, 0, q, k] = blk[q] == blk[k]
                elif q < L <= k:
                    vis[b, 0, q, k] = blk[k] < blk[q]
                elif q >= L and k >= L:
                    vis[b, 0, q, k] = blk[k] <= blk[q]
    x = torch.cat([noise.noisy_ids, ids], 1)
    with torch.no_grad():
        logits = model(x, attention_mask=vis, position_ids=torch.cat([pos, pos], 1)).logits
    expected = hand_loss(lambda _: logits[:, :L], ids, loss_mask, noise, shift=False)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_gradients_finite_with_padding_rows(family):
    model = tiny(family, V)
    spec = model.diffusion_spec()
    # row 2 is all padding (no prompt, no answer); row 1 is heavily left padded
    ids, loss_mask, attn = make_batch(prompt_lens=(4, 1, 0), resp_lens=(5, 2, 0))
    loss, metrics = sft_loss(model, ids, loss_mask, attn, spec, torch.Generator().manual_seed(0))
    assert loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_padding_row_does_not_change_the_loss(family):
    """A row without answer tokens is left out of the batch mean (it adds 0 and is not counted)."""
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    nll = sft_nll
    ids, loss_mask, attn = make_batch(prompt_lens=(4, 6, 0), resp_lens=(5, 8, 0))
    noise = fixed_noise(ids, loss_mask, spec.mask_token_id)
    with torch.no_grad():
        full, _ = nll(model, ids, noise, loss_mask, attn, spec)
        two = MaskedNoise(noise.noisy_ids[:2], noise.mask[:2], noise.p_mask[:2])
        part, _ = nll(model, ids[:2], two, loss_mask[:2], attn[:2], spec)
    assert float(full) == pytest.approx(float(part), rel=1e-5)


def test_zero_mask_gives_zero_loss_and_bad_inputs_raise():
    model = tiny("llada", V)
    spec = model.diffusion_spec()
    ids, loss_mask, attn = make_batch()
    empty = MaskedNoise(ids, torch.zeros_like(loss_mask), torch.ones(ids.shape))
    loss, _ = sft_nll(model, ids, empty, loss_mask, attn, spec)
    assert loss.item() == 0.0
    bad = MaskedNoise(ids, ~loss_mask & attn.bool(), torch.ones(ids.shape))  # masks the prompt
    with pytest.raises(ValueError, match="outside loss_mask"):
        sft_nll(model, ids, bad, loss_mask, attn, spec)
    hidden = loss_mask | ~attn.bool()  # claims left padding as answer
    with pytest.raises(ValueError, match="attention_mask hides"):
        sft_loss(model, ids, hidden, attn, spec, torch.Generator().manual_seed(0))


def test_registry_selects_by_attention_kind():
    assert SFT_OBJECTIVES.names() == ["block", "full"]
    assert [tiny(f, V).diffusion_spec().attention for f in ("llada", "dream", "sdar")] == ["full", "full", "block"]
    assert SFT_OBJECTIVES.get("full") == SftObjective(masked_diffusion_noise, masked_diffusion_logits)
    assert SFT_OBJECTIVES.get("block") == SftObjective(block_diffusion_noise, block_diffusion_logits)
    with pytest.raises(ValueError):
        SFT_OBJECTIVES.register("full", SFT_OBJECTIVES.get("block"))
