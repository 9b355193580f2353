"""CUDA checks of the samplers: a float32 model on the GPU decodes the same tokens as on the CPU
(greedy; CPU generator), a CUDA generator works, bf16 models decode mask-free responses, and the
compiled step (CUDA graphs) decodes the tokens of the eager one."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import PROMPTS, sharp_tiny

from dare.sampling import SamplingConfig, generate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = [
    ("llada", dict(algorithm="llada", gen_length=16, block_length=8, steps=8)),
    ("llada", dict(algorithm="llada", gen_length=16, block_length=8, steps=8, cache="prefix", cfg_scale=1.0)),
    ("llada", dict(algorithm="llada", gen_length=16, block_length=8, cache="dual", threshold=0.5)),
    ("dream", dict(algorithm="dream", gen_length=16, block_length=8, steps=8, cache="dual")),
    ("dream", dict(algorithm="dream", gen_length=16, steps=16, remasking="topk_margin")),
    ("sdar", dict(algorithm="sdar", gen_length=16, steps=8)),
    ("sdar", dict(algorithm="sdar", gen_length=16, remasking="low_confidence_dynamic", threshold=0.5)),
]


@pytest.mark.parametrize(("family", "kwargs"), CASES)
def test_cuda_matches_cpu(family, kwargs):
    model = sharp_tiny(family)
    config = SamplingConfig(**kwargs)
    cpu = generate(model, PROMPTS, config, torch.Generator().manual_seed(0))
    gpu = generate(model.cuda(), PROMPTS, config, torch.Generator().manual_seed(0))
    assert torch.equal(cpu.response_ids, gpu.response_ids.cpu())
    assert torch.equal(cpu.decode_step, gpu.decode_step.cpu())


@pytest.mark.parametrize(("family", "kwargs"), CASES)
def test_cuda_generator_and_bf16(family, kwargs):
    model = sharp_tiny(family).to("cuda", torch.bfloat16)
    config = SamplingConfig(**{**kwargs, "temperature": 0.8} if family != "llada" else kwargs)
    r = generate(model, PROMPTS, config, torch.Generator(device="cuda").manual_seed(0))
    mask_id = model.diffusion_spec().mask_token_id
    assert r.sequences.is_cuda and not (r.sequences == mask_id).any()
    assert (r.decode_step[r.response_mask] >= 0).all()


GRAPH_CASES = [
    ("llada", dict(algorithm="llada", gen_length=16, block_length=8, steps=8)),
    ("llada", dict(algorithm="llada", gen_length=16, block_length=8, steps=8, cache="prefix")),
    ("llada", dict(algorithm="llada", gen_length=16, block_length=8, cache="dual", threshold=0.5)),
    ("dream", dict(algorithm="dream", gen_length=16, block_length=8, steps=8, cache="dual")),
    ("sdar", dict(algorithm="sdar", gen_length=16, steps=8)),
    # CJ-GRPO's ASS + EOSER: the EOS factor is a per-step tensor input of the graph
    (
        "llada",
        dict(algorithm="llada", gen_length=16, block_length=8, steps=6, schedule="ascending", eos_gamma=(0.01, 1.0)),
    ),
    # the samplers with their own loop (sampled: the noise is drawn between the compiled pieces)
    ("llada", dict(algorithm="first_hitting", gen_length=16, block_length=8, temperature=1.0)),
    ("llada", dict(algorithm="few_step", gen_length=16, steps=4, remasking="random", temperature=1.0)),
    ("sdar", dict(algorithm="llada2", gen_length=16, steps=8, threshold=0.5, editing_threshold=0.5)),
]


@pytest.mark.xdist_group("sampling_compile")
@pytest.mark.parametrize(("family", "kwargs"), GRAPH_CASES)
def test_cuda_graph_step_matches_eager(family, kwargs):
    # compile=True on CUDA: inductor with mode="reduce-overhead" (CUDA graphs per shape bucket),
    # the static KV cache's buffers captured at their fixed addresses
    import torch._dynamo

    torch._dynamo.config.recompile_limit = 64
    model = sharp_tiny(family).cuda()
    eager = generate(model, PROMPTS, SamplingConfig(**kwargs), torch.Generator(device="cuda").manual_seed(0))
    config = SamplingConfig(compile=True, **kwargs)
    for _ in range(2):  # the second run replays the captured graphs
        graph = generate(model, PROMPTS, config, torch.Generator(device="cuda").manual_seed(0))
        assert torch.equal(graph.response_ids, eager.response_ids)
        assert torch.equal(graph.decode_step, eager.decode_step)
        assert graph.nfe == eager.nfe
