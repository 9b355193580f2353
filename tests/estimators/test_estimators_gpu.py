"""CUDA checks of the estimators: a CPU generator gives the same plan on CUDA, fp32 estimates match
CPU, bf16 estimates are finite."""

import pytest
import torch
from rl_est_helpers import V, make_rl_batch

from dare.diffusion.estimators import build_estimator
from dare.models import tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cuda(batch):
    return {k: v.cuda() for k, v in batch.items()}


@pytest.mark.parametrize("name", ["d1", "coupled"])
@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_cuda_matches_cpu(family, name):
    batch = make_rl_batch()
    est = build_estimator(name, p_mask_prompt=0.2)
    plan = est.sample(batch, torch.Generator().manual_seed(0))
    plan_cuda = est.sample(_cuda(batch), torch.Generator().manual_seed(0))
    assert plan_cuda.view_masks.is_cuda
    assert torch.equal(plan.view_masks, plan_cuda.view_masks.cpu())
    assert torch.equal(plan.prompt_mask, plan_cuda.prompt_mask.cpu())
    model = tiny(family, V).eval()
    with torch.no_grad():
        cpu = est.logp(model, batch, plan)
        gpu = est.logp(model.cuda(), _cuda(batch), plan_cuda)
        bf16 = est.logp(model.to(torch.bfloat16), _cuda(batch), plan_cuda)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    assert bf16.dtype == torch.float32 and bool(torch.isfinite(bf16).all())
