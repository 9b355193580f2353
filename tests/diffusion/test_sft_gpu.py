"""CUDA checks of the noise and SFT losses: same draws and same losses as on CPU, bf16 finite."""

import pytest
import torch

from dare.diffusion import block_diffusion_attention_mask, forward_noise, padding_position_ids, sft_loss
from dare.models import tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

V = 64


def _batch(device):
    g = torch.Generator().manual_seed(0)
    P, R, eos = 6, 10, V - 2
    ids = torch.full((4, P + R), eos, dtype=torch.long)
    attn = torch.zeros(4, P + R, dtype=torch.long)
    loss_mask = torch.zeros(4, P + R, dtype=torch.bool)
    for b, (p, r) in enumerate([(4, 5), (6, 8), (2, 3), (5, 7)]):
        ids[b, P - p : P + r] = torch.randint(0, V - 2, (p + r,), generator=g)
        attn[b, P - p :] = 1
        loss_mask[b, P:] = True
    return ids.to(device), loss_mask.to(device), attn.to(device)


def test_cpu_generator_gives_the_same_mask_on_cuda():
    ids, loss_mask, _ = _batch("cpu")
    a = forward_noise(ids, loss_mask, V - 1, torch.Generator().manual_seed(3))
    b = forward_noise(ids.cuda(), loss_mask.cuda(), V - 1, torch.Generator().manual_seed(3))
    assert b.mask.is_cuda and torch.equal(a.mask, b.mask.cpu())
    c = forward_noise(ids.cuda(), loss_mask.cuda(), V - 1, torch.Generator("cuda").manual_seed(3))
    assert not bool((c.mask & ~loss_mask.cuda()).any())


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_cuda_fp32_loss_matches_cpu(family):
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    fn = sft_loss
    with torch.no_grad():
        cpu, _ = fn(model, *_batch("cpu"), spec, torch.Generator().manual_seed(1))
        gpu, _ = fn(model.cuda(), *_batch("cuda"), spec, torch.Generator().manual_seed(1))
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_cuda_bf16_loss_and_grads_finite(family):
    model = tiny(family, V).to("cuda", torch.bfloat16)
    spec = model.diffusion_spec()
    loss, metrics = sft_loss(model, *_batch("cuda"), spec, torch.Generator().manual_seed(2))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_cuda_sdar_clean_half_equals_plain_forward():
    model = tiny("sdar", V).cuda().eval()
    ids, _, attn = _batch("cuda")
    valid = attn.bool()
    pos = padding_position_ids(valid)
    L = ids.shape[1]
    xt = torch.where(torch.rand(ids.shape, device="cuda") < 0.5, torch.full_like(ids, V - 1), ids)
    mask = block_diffusion_attention_mask(pos, valid, model.diffusion_spec().block_size)
    with torch.no_grad():
        both = model(torch.cat([xt, ids], 1), attention_mask=mask, position_ids=torch.cat([pos, pos], 1)).logits
        plain = model(ids, attention_mask=attn).logits
    torch.testing.assert_close(both[:, L:][valid], plain[valid], atol=1e-4, rtol=1e-4)
