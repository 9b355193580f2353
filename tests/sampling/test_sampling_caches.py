"""KV-cached decoding against its plain reference.

- SDAR: the block KV cache (prefill + per-block commit) gives exactly the tokens of recomputing
  everything, greedy and sampled.
- Fast-dLLM prefix / dual cache: right after the block-start refresh, the cached forward gives the
  logits of the full forward (positions and padding are right); when every block is decoded in
  one step only refreshed logits are used, so the tokens equal the no-cache tokens exactly.
  Later steps reuse stale prefix (and suffix) K/V, which is approximate by design: there the
  test_sampling_algorithms invariants apply.
"""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import PROMPTS

from dare.sampling import SamplingConfig, generate
from dare.sampling.engine import DecodeState, FullAttentionRunner, prepare_prompts


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("remasking", ["low_confidence_static", "sequential"])
def test_sdar_block_cache_equals_recompute(models, temperature, remasking):
    kw = dict(algorithm="sdar", gen_length=24, steps=12, block_length=8, temperature=temperature, remasking=remasking)
    cached = generate(models["sdar"], PROMPTS, SamplingConfig(**kw), torch.Generator().manual_seed(3))
    plain = generate(models["sdar"], PROMPTS, SamplingConfig(cache="none", **kw), torch.Generator().manual_seed(3))
    assert cached.config.cache == "block"
    assert torch.equal(cached.response_ids, plain.response_ids)
    assert torch.equal(cached.decode_step, plain.decode_step)
    torch.testing.assert_close(cached.confidence, plain.confidence, equal_nan=True, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fresh_cache_gives_full_forward_logits(models, family, cache):
    model = models[family]
    spec = model.diffusion_spec()
    batch = prepare_prompts(PROMPTS, spec, 1, torch.device("cpu"))
    state = DecodeState(batch, 16, spec, spec.eos_token_ids)
    state.x[:, state.P : state.P + 8] = torch.randint(0, 60, (len(PROMPTS), 8))  # block 0 decoded
    start, end = state.P + 8, state.P + 16
    state.x[:, start + 2] = 7  # a token already decoded inside the current block
    reference = FullAttentionRunner(model, spec, state, "none", 0.0)
    want, _ = reference.block_logits(state.x, start, end, refresh=True)  # [N, 8, V]
    runner = FullAttentionRunner(model, spec, state, cache, 0.0)
    first, _ = runner.block_logits(state.x, start, end, refresh=True)
    cached, _ = runner.block_logits(state.x, start, end, refresh=False)  # nothing changed since
    torch.testing.assert_close(first, want)
    # a shifted model cannot predict a window's first token from the window (decoded at refresh)
    skip = 1 if spec.shift_logits else 0
    torch.testing.assert_close(cached[:, skip:], want[:, skip:], rtol=1e-4, atol=1e-4)
    assert runner.nfe == 2


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_step_per_block_equals_no_cache(models, cache):
    kw = dict(algorithm="llada", gen_length=16, block_length=4, steps=4)
    plain = generate(models["llada"], PROMPTS, SamplingConfig(**kw))
    cached = generate(models["llada"], PROMPTS, SamplingConfig(cache=cache, **kw))
    assert torch.equal(cached.response_ids, plain.response_ids)
    assert cached.nfe == plain.nfe == 4


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cfg_with_cache_runs(models, cache):
    cfg = SamplingConfig(algorithm="llada", gen_length=16, block_length=8, steps=8, cfg_scale=1.0, cache=cache)
    r = generate(models["llada"], PROMPTS, cfg)
    assert r.nfe == 8 and not (r.response_ids == 63).any()
