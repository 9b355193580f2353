"""Forward semantics of the three families: attention rules, padding, KV caches, logits shift,
soft inputs, gradient checkpointing, dtypes."""

import pytest
import torch

from dare.models import DiffusionCache, aligned_logits, tiny

FAMILIES = ["llada", "dream", "sdar"]
V = 48


def model_of(family):
    return tiny(family, vocab_size=V).eval()


def ids(B=2, L=12, seed=0):
    return torch.randint(0, V - 3, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bidirectional_families_see_future_tokens(family):
    model, x = model_of(family), ids()
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % (V - 3)
    a, b = model(x).logits, model(y).logits
    assert (a[:, :9] - b[:, :9]).abs().amax() > 1e-4  # position 9 influences every earlier position


def test_sdar_never_sees_a_later_block():
    model, x = model_of("sdar"), ids(L=12)  # blocks [0..3] [4..7] [8..11]
    base = model(x).logits
    for j in range(12):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % (V - 3)
        diff = (model(y).logits - base).abs().amax(dim=(0, 2))  # [L]
        blk = j // 4
        assert bool((diff[: blk * 4] == 0).all()), f"token {j} leaked into an earlier block"
        assert diff[blk * 4 : blk * 4 + 4].min() > 1e-5, "tokens of the same block must see each other"


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_is_ignored(family):
    model, x = model_of(family), ids(B=1, L=8)
    pad = torch.full((1, 5), 7)  # junk tokens under a zero mask
    padded = torch.cat([pad, x], dim=1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 8)], dim=1).long()
    ref = model(x).logits
    out = model(padded, attention_mask=mask).logits[:, 5:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_explicit_4d_mask_equals_padding_rule(family):
    model, x = model_of(family), ids(B=2, L=8)
    mask2d = torch.ones(2, 8, dtype=torch.bool)
    mask2d[0, :3] = False
    rule = model(x, attention_mask=mask2d).logits
    pos = (mask2d.long().cumsum(-1) - 1).clamp(min=0)
    vis = mask2d[:, None, :].expand(2, 8, 8).clone()
    if family == "sdar":
        vis &= (pos // 4)[:, None, :] <= (pos // 4)[:, :, None]
    vis |= torch.eye(8, dtype=torch.bool)
    explicit = model(x, attention_mask=vis[:, None], position_ids=pos).logits
    torch.testing.assert_close(explicit, rule, atol=1e-6, rtol=1e-6)


def test_sdar_block_cache_equals_full_forward():
    model, x = model_of("sdar"), ids(B=2, L=16)
    full = model(x).logits
    cache = DiffusionCache()
    model(x[:, :4], past_key_values=cache, use_cache=True)  # prefill the prompt block
    for start in range(4, 16, 4):
        blk = x[:, start : start + 4]
        read = model(blk, past_key_values=cache, use_cache=False).logits  # a denoising step: no store
        assert cache.get_seq_length() == start
        torch.testing.assert_close(read, full[:, start : start + 4], atol=1e-5, rtol=1e-5)
        model(blk, past_key_values=cache, use_cache=True)  # commit the block's K/V
    assert cache.get_seq_length() == 16


def test_sdar_block_cache_with_left_padding():
    model, x = model_of("sdar"), ids(B=2, L=12)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    full = model(x, attention_mask=mask).logits
    cache = DiffusionCache()
    model(x[:, :8], attention_mask=mask[:, :8], past_key_values=cache, use_cache=True)
    out = model(x[:, 8:], attention_mask=mask[:, 8:], past_key_values=cache).logits
    torch.testing.assert_close(out, full[:, 8:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_prefix_cache_at_block_boundary_equals_full_forward(family):
    model, x = model_of(family), ids(B=2, L=16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :3] = 0
    full = model(x, attention_mask=mask, use_cache=True)
    cache = full.past_key_values
    cache.crop(8)  # keep the prefix before the current block
    tail = model(x[:, 8:], attention_mask=mask, past_key_values=cache).logits  # block + suffix
    torch.testing.assert_close(tail, full.logits[:, 8:], atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == 8  # reading did not grow the prefix


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_dual_cache_replace_equals_full_forward(family):
    model, x = model_of(family), ids(B=2, L=16)
    full = model(x, use_cache=True)
    cache = full.past_key_values
    with torch.no_grad():
        out = model(x[:, 8:12], past_key_values=cache, replace_position=8).logits
    torch.testing.assert_close(out, full.logits[:, 8:12], atol=1e-5, rtol=1e-5)
    # changing the block's tokens: the replaced K/V are used, the rest of the cache is reused
    y = x.clone()
    y[:, 8:12] = (y[:, 8:12] + 1) % (V - 3)
    with torch.no_grad():
        out = model(y[:, 8:12], past_key_values=cache, replace_position=8).logits
        ref_cache = model(x, use_cache=True).past_key_values  # stale prefix/suffix K/V, fresh block
    assert cache.get_seq_length() == 16
    assert not torch.allclose(out, full.logits[:, 8:12])
    torch.testing.assert_close(cache.keys[0][:, :, :8], ref_cache.keys[0][:, :, :8])


def test_dream_shift_aligned_logits():
    model, x = model_of("dream"), ids()
    raw = model(x).logits
    spec = model.diffusion_spec()
    assert spec.shift_logits
    al = aligned_logits(raw, spec)
    torch.testing.assert_close(al[:, 1:], raw[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(al[:, 0], raw[:, 0], rtol=0, atol=0)
    for fam in ("llada", "sdar"):
        m = model_of(fam)
        assert aligned_logits(m(x).logits, m.diffusion_spec()) is not None
        assert not m.diffusion_spec().shift_logits


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_match_input_ids_and_accept_soft_tokens(family):
    model, x = model_of(family), ids()
    emb = model.get_input_embeddings().weight
    hard = torch.nn.functional.one_hot(x, V).float() @ emb  # one-hot x embedding = lookup
    torch.testing.assert_close(model(inputs_embeds=hard).logits, model(x).logits, atol=1e-5, rtol=1e-5)
    probs = torch.softmax(torch.randn(2, 12, V), -1).requires_grad_()  # soft tokens (DRAKES)
    model(inputs_embeds=probs @ emb).logits.sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_same_gradients(family):
    x = ids()
    grads = []
    for ckpt in (False, True):
        model = tiny(family, vocab_size=V).train()
        if ckpt:
            model.gradient_checkpointing_enable()
        model(x).logits.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_forward_close_to_fp32(family):
    model, x = model_of(family), ids()
    ref = model(x).logits
    out = model.to(torch.bfloat16)(x).logits
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_position_ids_offset_is_relative_for_full_attention():
    model, x = model_of("llada"), ids()
    pos = torch.arange(12)[None].expand(2, 12)
    torch.testing.assert_close(model(x, position_ids=pos + 5).logits, model(x).logits, atol=1e-4, rtol=1e-4)
