"""The static decode step (issue 21, item 1): a preallocated KV cache written in place, a done-check
every `sync_every` steps, and the step compiled with `torch.compile`.

- golden: every case of test_sampling_algorithms decodes the tokens, decode steps and forward
  counts recorded from the sampler before the static step (commit b52c7f4: growing cache, a sync
  every step), greedy and sampled (data/golden_tokens.json, built by this repository's tiny models);
  a deliberate change to the tiny models or to a sampler's tokens regenerates it: for every key
  `case@T<t>`, `decode(models, case, t)`'s response_ids / decode_step lists and nfe;
- `sync_every=k` gives the tokens of k=1 greedy for every case, and sampled for every rule whose
  step count is fixed (parallel rules and llada2's editing may draw extra noise before the check:
  documented; first_hitting's blocks only end early when every row is done, so its sampled tokens
  are those of k=1 too); few_step and rgas have a fixed schedule and no check at all;
- `StaticKVCache` returns exactly the keys the growing `DiffusionCache` returns, in every mode;
- compiled == eager (tokens, decode steps, forward count) at temperature 0 for every sampler x
  cache mode, and sampled (temperature 1) for the samplers with their own loop (first_hitting,
  few_step, rgas, llada2 with editing; rgas compiles only its policy forward); the compile tests
  share one xdist worker and use the "aot_eager" backend (the same graph capture and guards as
  inductor, without code generation, to keep CPU time to seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sampling_helpers import PROMPTS
from test_sampling_algorithms import CASES

from dare.models.layers import DiffusionCache
from dare.sampling import SamplingConfig, generate
from dare.sampling import engine as engine_module
from dare.sampling.base import ENGINE_OPTIONS, SAMPLERS
from dare.sampling.kv_cache import StaticKVCache

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_tokens.json").read_text())
PARALLEL = {k for k, v in CASES.items() if "threshold" in v[1] or "factor" in v[1]}


def decode(models, case: str, temperature: float, **extra):
    family, cfg, _, _ = CASES[case]
    config = SamplingConfig(**{**cfg, "temperature": temperature, **extra})
    return generate(models[family], PROMPTS, config, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("key", list(GOLDEN))
def test_tokens_equal_the_sampler_before_the_static_step(models, key):
    case, temperature = key.split("@T")
    r = decode(models, case, float(temperature))
    want = GOLDEN[key]
    assert r.response_ids.tolist() == want["tokens"]
    assert r.decode_step.tolist() == want["decode_step"]
    assert r.nfe == want["nfe"]


@pytest.mark.parametrize("sync_every", [2, 5])
@pytest.mark.parametrize("case", list(CASES))
def test_sync_every_k_gives_the_tokens_of_every_step(models, case, sync_every):
    temperatures = [0.0] if case in PARALLEL else [0.0, 1.0]
    for t in temperatures:
        every = decode(models, case, t)
        sparse = decode(models, case, t, sync_every=sync_every)
        assert torch.equal(sparse.response_ids, every.response_ids), f"T={t}"
        assert torch.equal(sparse.decode_step, every.decode_step), f"T={t}"
        # a sparser check can only add forwards that commit nothing (never more than k-1 a block)
        blocks = sparse.config.num_blocks
        assert every.nfe <= sparse.nfe <= every.nfe + (sync_every - 1) * blocks, f"T={t}"


def test_sync_every_saves_host_checks_not_tokens_when_rows_stop_early(models):
    # logits_eos_inf off: rows may end early; the extra steps before the check change nothing
    every = decode(models, "llada_threshold", 0.0, gen_length=32, block_length=8)
    sparse = decode(models, "llada_threshold", 0.0, gen_length=32, block_length=8, sync_every=8)
    assert torch.equal(every.response_ids, sparse.response_ids)


def _host_reads(monkeypatch, models, case: str, **extra) -> tuple[int, torch.Tensor]:
    """(device values read on the host through `bool(tensor)`, response) of one decode."""
    reads, real = [0], torch.Tensor.__bool__

    def counted(t: torch.Tensor) -> bool:
        reads[0] += 1
        return real(t)

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "__bool__", counted)
        r = decode(models, case, 0.0, **extra)
    return reads[0], r.response_ids


def test_own_loop_samplers_read_the_device_only_at_the_checks(monkeypatch, models):
    # first_hitting, no early stop: 2 blocks x 8 steps; a check before steps 0..7 (k=1) or 0, 4 (k=4)
    one, tokens = _host_reads(monkeypatch, models, "first_hitting", logits_eos_inf=True)
    four, sparse = _host_reads(monkeypatch, models, "first_hitting", logits_eos_inf=True, sync_every=4)
    assert one - four == 2 * (8 - 2) and torch.equal(tokens, sparse)
    # llada2 with editing: the block ends when its rows settle (data-dependent): fewer reads, same tokens
    one, tokens = _host_reads(monkeypatch, models, "llada2_editing")
    four, sparse = _host_reads(monkeypatch, models, "llada2_editing", sync_every=4)
    assert four < one and torch.equal(tokens, sparse)


FULL_ATTENTION = [k for k, v in CASES.items() if v[0] in ("llada", "dream") and k != "dream_origin"]


@pytest.mark.parametrize("case", FULL_ATTENTION)
def test_model_forward_reads_no_device_value_for_an_unpadded_batch(monkeypatch, models, case):
    """The model's attention decides "no padding, no mask" on the host when the decode passes no
    mask (an unpadded batch): no `bool(tensor)` from dare/models inside the loop. A padded batch
    without a KV cache gets the full mask built once by the runner (no read either); with a prefix /
    dual cache the model still reads the cached keys' validity. Tokens: the golden tests (padded
    prompts) and an explicit all-True mask here."""
    family, cfg, _, _ = CASES[case]
    reads, real = [], torch.Tensor.__bool__

    def counted(t: torch.Tensor) -> bool:
        import sys

        reads.append(sys._getframe(1).f_code.co_filename)
        return real(t)

    def run(prompts):
        config = SamplingConfig(**{**cfg, "temperature": 0.0})
        reads.clear()
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "__bool__", counted)
            r = generate(models[family], prompts, config, torch.Generator().manual_seed(0))
        return sum("dare/models/" in f for f in reads), r.response_ids

    unpadded = [[5, 9, 11], [7, 3, 21], [17, 4, 6]]
    in_model, tokens = run(unpadded)
    assert in_model == 0
    with monkeypatch.context() as m:  # the same batch with an explicit all-True mask: the same tokens
        m.setattr(engine_module.FullAttentionRunner, "padding_mask", lambda self: self.valid)
        _, with_mask = run(unpadded)
    assert torch.equal(tokens, with_mask)
    # left-padded: without a cache the runner gives the model the full mask, built once (no read);
    # with a prefix / dual cache the model reads the cached keys' validity
    in_model, _ = run(PROMPTS)
    assert (in_model == 0) == (cfg.get("cache", "none") == "none"), in_model


@torch.no_grad()
def test_a_padded_cache_keeps_masking_keys_when_later_calls_give_no_mask(models):
    """`DiffusionCache.padded`: keys stored with a padding mask stay masked in a later call that
    passes none (append, and replace in place) — the host-side flag never drops a padded key."""
    model = models["llada"]
    ids = torch.tensor([[62, 62, 5, 9, 11, 63, 63], [7, 3, 21, 40, 8, 63, 63]])
    valid = torch.tensor([[False, False, True, True, True, True, True], [True] * 7])
    cache = DiffusionCache()
    model(ids[:, :5], attention_mask=valid[:, :5], past_key_values=cache, use_cache=True)
    assert cache.padded
    later = model(ids[:, 5:], past_key_values=cache, use_cache=False).logits
    masked = model(ids[:, 5:], attention_mask=valid, past_key_values=cache, use_cache=False).logits
    assert torch.equal(later, masked)
    cache.padded = False  # what dropping the flag would do: the padded keys become visible
    assert not torch.allclose(model(ids[:, 5:], past_key_values=cache, use_cache=False).logits, masked)
    cache = DiffusionCache()  # replace in place over a cache of the whole (padded) sequence
    model(ids, attention_mask=valid, past_key_values=cache, use_cache=True)
    replaced = model(ids[:, 5:], past_key_values=cache, replace_position=5).logits
    assert torch.equal(
        replaced, model(ids[:, 5:], attention_mask=valid, past_key_values=cache, replace_position=5).logits
    )
    fresh = DiffusionCache()  # no mask ever: not padded
    model(ids[1:, :5], past_key_values=fresh, use_cache=True)
    assert not fresh.padded


def test_sync_every_is_validated():
    with pytest.raises(ValueError, match="sync_every=0: must be a positive integer"):
        SamplingConfig(sync_every=0)
    # every registered sampler has a static step: all of them read both settings
    for name in SAMPLERS.names():
        assert ENGINE_OPTIONS <= SAMPLERS.get(name).options, name
    with pytest.raises(ValueError, match="compile='yes': must be true or false"):
        SamplingConfig(compile="yes")


def _kv(seed: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, q, 4, generator=g), torch.randn(2, 3, q, 4, generator=g)


def _meta(cache: DiffusionCache, q: int) -> None:
    """What the attention context does before a storing forward: advance positions / validity."""
    n = cache.get_seq_length() + q
    cache.positions, cache.valid = torch.arange(n).expand(2, n), torch.ones(2, n, dtype=torch.bool)


def _clone(kv: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The static cache returns views of its buffers, valid until its next write (a forward uses
    them at once): keep a copy to compare later."""
    return kv[0].clone(), kv[1].clone()


@torch.no_grad()
def test_static_cache_returns_the_keys_of_the_growing_cache():
    grow, static = DiffusionCache(), StaticKVCache(capacity=10)
    for cache in (grow, static):  # prefill 4 positions (store), then a 3-position block read without storing
        _meta(cache, 4)
    outs = [_clone(cache.update(0, *_kv(0, 4), store=True, replace_position=None)) for cache in (grow, static)]
    outs += [_clone(cache.update(0, *_kv(1, 3), store=False, replace_position=None)) for cache in (grow, static)]
    assert static.get_seq_length() == grow.get_seq_length() == 4
    for cache in (grow, static):  # commit the block (store), then crop back (prefix cache)
        _meta(cache, 3)
    outs += [_clone(cache.update(0, *_kv(1, 3), store=True, replace_position=None)) for cache in (grow, static)]
    for cache in (grow, static):
        cache.crop(5)
    outs += [_clone(cache.update(0, *_kv(2, 2), store=False, replace_position=None)) for cache in (grow, static)]
    outs += [_clone(cache.update(0, *_kv(3, 2), store=False, replace_position=1)) for cache in (grow, static)]  # dual
    for (gk, gv), (sk, sv) in zip(outs[0::2], outs[1::2]):
        assert torch.equal(gk, sk) and torch.equal(gv, sv)
    assert torch.equal(grow.positions, static.positions) and torch.equal(grow.valid, static.valid)
    address = static.keys[0].data_ptr()
    static.reset()
    _meta(static, 4)
    static.update(0, *_kv(0, 4), store=True, replace_position=None)
    assert static.keys[0].data_ptr() == address  # reused, not reallocated
    with pytest.raises(RuntimeError, match="12 positions needed, capacity is 10"):
        static.update(0, *_kv(4, 8), store=False, replace_position=None)


def test_static_cache_refuses_autograd():
    with pytest.raises(RuntimeError, match="torch.no_grad"):
        StaticKVCache(4).update(0, *_kv(0, 2), store=False, replace_position=None)


# --- compiled == eager ----------------------------------------------------------------------

# one block each (8 tokens, 4 steps): a second block would only add a recompile per graph
COMPILE_CASES = {
    "llada_none": ("llada", dict(algorithm="llada", gen_length=8, steps=4)),
    "llada_prefix": ("llada", dict(algorithm="llada", gen_length=8, steps=4, cache="prefix")),
    "llada_dual": ("llada", dict(algorithm="llada", gen_length=8, steps=4, cache="dual")),
    # CJ-GRPO's ASS + EOSER: the EOS factor enters the step as a tensor
    "llada_ass_eoser": ("llada", dict(algorithm="llada", gen_length=8, steps=3, schedule="ascending",
                                      eos_gamma=(0.01, 1.0))),
    "llada_ass_eoser_T1": ("llada", dict(algorithm="llada", gen_length=8, steps=3, schedule="ascending",
                                         eos_gamma=(0.01, 1.0), temperature=1.0)),
    # MDPO's RCR: the remasking rule runs inside the step, the running confidences enter as state
    "llada_rcr": ("llada", dict(algorithm="llada", gen_length=8, steps=4, remasking="rcr")),
    "llada_rcr_T1": ("llada", dict(algorithm="llada", gen_length=8, steps=4, remasking="rcr", temperature=1.0)),
    "dream_none": ("dream", dict(algorithm="dream", gen_length=8, steps=4)),
    "dream_prefix": ("dream", dict(algorithm="dream", gen_length=8, steps=4, cache="prefix")),
    "dream_dual": ("dream", dict(algorithm="dream", gen_length=8, steps=4, cache="dual")),
    "sdar_block": ("sdar", dict(algorithm="sdar", gen_length=8, block_length=8, steps=4)),
    "sdar_none": ("sdar", dict(algorithm="sdar", gen_length=8, block_length=8, steps=4, cache="none")),
    # the samplers with their own loop; first_hitting, few_step "random" and rgas draw noise even at T = 0
    "llada2": ("sdar", dict(algorithm="llada2", gen_length=8, block_length=8, steps=4, threshold=0.5)),
    "llada2_editing": ("sdar", dict(algorithm="llada2", gen_length=8, block_length=8, steps=4, threshold=0.5,
                                    editing_threshold=0.5, max_post_steps=2)),
    "first_hitting": ("llada", dict(algorithm="first_hitting", gen_length=8)),
    "few_step": ("llada", dict(algorithm="few_step", gen_length=8, steps=4, remasking="low_confidence")),
    "few_step_random": ("llada", dict(algorithm="few_step", gen_length=8, steps=4, remasking="random")),
    "rgas": ("guided", dict(algorithm="rgas", gen_length=8, steps=4)),
    # sampled (temperature 1), fixed step counts: the compiled step draws the eager noise
    "first_hitting_T1": ("llada", dict(algorithm="first_hitting", gen_length=8, temperature=1.0)),
    "few_step_random_T1": ("llada", dict(algorithm="few_step", gen_length=8, steps=4, temperature=1.0)),
    # (another length: the compiled policy forward of "rgas" does not depend on the temperature)
    "rgas_T1": ("guided", dict(algorithm="rgas", gen_length=6, steps=3, temperature=1.0)),
    "llada2_editing_T1": ("sdar", dict(algorithm="llada2", gen_length=8, block_length=8, steps=4, threshold=0.5,
                                       editing_threshold=0.5, max_post_steps=2, temperature=1.0)),
}  # fmt: skip


@pytest.fixture(scope="module")
def aot_eager():
    """Compile with "aot_eager", and allow one compiled variant per case (the default recompile
    limit would silently fall back to eager after a few configs)."""
    import torch._dynamo

    saved = (engine_module.COMPILE_BACKEND, torch._dynamo.config.recompile_limit)
    engine_module.COMPILE_BACKEND = "aot_eager"
    torch._dynamo.config.recompile_limit = 64
    yield
    engine_module.COMPILE_BACKEND, torch._dynamo.config.recompile_limit = saved


@pytest.mark.xdist_group("sampling_compile")
@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_compiled_step_equals_eager(models, aot_eager, case):
    from torch._dynamo.utils import counters

    family, cfg = COMPILE_CASES[case]
    eager = generate(models[family], PROMPTS, SamplingConfig(**cfg), torch.Generator().manual_seed(0))
    frames = counters["frames"]["ok"]
    compiled = generate(models[family], PROMPTS, SamplingConfig(compile=True, **cfg), torch.Generator().manual_seed(0))
    assert counters["frames"]["ok"] > frames  # this config's step was traced and compiled, not reused or skipped
    assert torch.equal(compiled.response_ids, eager.response_ids)
    assert torch.equal(compiled.decode_step, eager.decode_step)
    assert compiled.nfe == eager.nfe
    torch.testing.assert_close(compiled.confidence, eager.confidence, equal_nan=True)
