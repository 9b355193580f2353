"""Invariants every registered sampling algorithm must keep, on tiny float32 models:

- temperature 0 is deterministic (and a fixed generator makes the random strategies repeatable);
- the schedule unmasks exactly the planned number of tokens per step;
- blocks are decoded in order: no token outside the current block is unmasked;
- no mask token remains and the prompt is untouched;
- a batch of prompts of different lengths (left padded) decodes exactly like each prompt alone.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from sampling_helpers import PROMPTS

from dare.sampling import SamplingConfig, generate
from dare.sampling.ops import planned_counts

G16 = dict(gen_length=16, block_length=8, steps=8)  # 2 blocks x 4 steps, 2 tokens a step

# id -> (family, config, deterministic at T=0, fixed-count rule or None)
CASES = {
    "llada": ("llada", dict(algorithm="llada", **G16), True, "linear"),
    "llada_uneven_steps": ("llada", dict(algorithm="llada", gen_length=16, block_length=8, steps=6), True, "linear"),
    "llada_random": ("llada", dict(algorithm="llada", remasking="random", **G16), False, "linear"),
    "llada_cfg": ("llada", dict(algorithm="llada", cfg_scale=1.5, **G16), True, "linear"),
    "llada_eos_conf": ("llada", dict(algorithm="llada", confidence_eos_eot_inf=True, **G16), True, "linear"),
    "llada_prefix": ("llada", dict(algorithm="llada", cache="prefix", **G16), True, "linear"),
    "llada_dual": ("llada", dict(algorithm="llada", cache="dual", **G16), True, "linear"),
    "llada_ascending": (
        "llada",
        dict(algorithm="llada", gen_length=16, block_length=8, steps=6, schedule="ascending"),
        True,
        "ascending",
    ),  # fmt: skip
    "llada_eoser": ("llada", dict(algorithm="llada", eos_gamma=(0.01, 1.0), **G16), True, "linear"),
    "llada_eoser_ascending": (
        "llada",
        dict(algorithm="llada", gen_length=16, steps=4, schedule="ascending", eos_gamma=(0.01, 1.0)),
        True,
        "ascending",
    ),  # fmt: skip
    # MDPO's RCR: one block (with two, a token of the first block may be redrawn during the second, which
    # the block-order check below refuses by design); decode steps are those of each token's last draw,
    # so its held counts are checked in test_rcr_sampler.py instead of here
    "llada_rcr": ("llada", dict(algorithm="llada", remasking="rcr", gen_length=16, steps=8), True, None),
    "llada_threshold": ("llada", dict(algorithm="llada", threshold=0.4, **G16), True, None),
    "llada_factor_dual": ("llada", dict(algorithm="llada", cache="dual", factor=1.5, **G16), True, None),
    "dream_entropy": ("dream", dict(algorithm="dream", **G16), True, "dream"),
    "dream_maskgit_plus": ("dream", dict(algorithm="dream", remasking="maskgit_plus", **G16), True, "dream"),
    "dream_topk_margin": ("dream", dict(algorithm="dream", remasking="topk_margin", **G16), True, "dream"),
    "dream_origin": ("dream", dict(algorithm="dream", remasking="origin", **G16), False, None),
    "dream_alg_temp": ("dream", dict(algorithm="dream", alg_temp=0.5, **G16), False, "dream"),
    "dream_prefix": ("dream", dict(algorithm="dream", cache="prefix", **G16), True, "dream"),
    "dream_dual_threshold": (
        "dream",
        dict(algorithm="dream", cache="dual", remasking="maskgit_plus", threshold=0.4, **G16),
        True,
        None,
    ),  # fmt: skip
    "sdar_static": ("sdar", dict(algorithm="sdar", gen_length=16, steps=8), True, "linear"),
    "sdar_dynamic": (
        "sdar",
        dict(algorithm="sdar", gen_length=16, steps=8, remasking="low_confidence_dynamic", threshold=0.5),
        True,
        None,
    ),  # fmt: skip
    "sdar_sequential": ("sdar", dict(algorithm="sdar", gen_length=16, steps=8, remasking="sequential"), True, "linear"),
    "sdar_no_cache": ("sdar", dict(algorithm="sdar", gen_length=16, steps=8, cache="none"), True, "linear"),
    "first_hitting": ("llada", dict(algorithm="first_hitting", gen_length=16, block_length=8), False, "linear"),
    "llada2": ("sdar", dict(algorithm="llada2", gen_length=16, steps=8, threshold=0.5), True, None),
    "llada2_editing": (
        "sdar",
        dict(algorithm="llada2", gen_length=16, steps=8, threshold=0.5, editing_threshold=0.5, max_post_steps=2),
        True,
        None,
    ),  # fmt: skip
    "few_step": ("llada", dict(algorithm="few_step", gen_length=16, steps=8, remasking="low_confidence"), True, None),
    "few_step_random": ("llada", dict(algorithm="few_step", gen_length=16, steps=8, remasking="random"), False, None),
    "rgas": ("guided", dict(algorithm="rgas", gen_length=8, steps=4), False, None),
}
DETERMINISTIC = [k for k, v in CASES.items() if v[2]]
FIXED_COUNT = [k for k, v in CASES.items() if v[3]]


def run(models, case: str, prompts=PROMPTS, seed: int = 0, **extra):
    family, cfg, _, _ = CASES[case]
    config = SamplingConfig(**{**cfg, **extra})
    return generate(models[family], prompts, config, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(CASES))
def test_invariants(models, case):
    r = run(models, case)
    cfg = r.config
    N, L = r.response_ids.shape
    assert (N, L) == (len(PROMPTS), cfg.gen_length)
    assert not (r.sequences == models[CASES[case][0]].diffusion_spec().mask_token_id).any()
    assert torch.equal(r.sequences[:, : r.prompt_ids.shape[1]], r.prompt_ids)
    inside = r.response_mask
    assert (r.decode_step[inside] >= 0).all() and (r.decode_step[~inside] == -1).all()
    conf = r.confidence[inside]
    assert ((conf > 0) & (conf <= 1)).all()
    # blocks in order: every token of block b is unmasked before any token of block b+1
    Lb = cfg.block_length
    for n in range(N):
        steps = [r.decode_step[n, b * Lb : (b + 1) * Lb][inside[n, b * Lb : (b + 1) * Lb]] for b in range(L // Lb)]
        steps = [s for s in steps if len(s)]
        for earlier, later in zip(steps, steps[1:]):
            assert earlier.max() < later.min(), f"row {n}: a later block was decoded before an earlier one finished"
    assert r.nfe > 0 and r.wall_time > 0 and r.tokens_per_second > 0


@pytest.mark.parametrize("case", DETERMINISTIC)
def test_temperature_zero_is_deterministic(models, case):
    a, b = run(models, case, seed=0), run(models, case, seed=123)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.decode_step, b.decode_step)


@pytest.mark.parametrize("case", [k for k in CASES if k not in DETERMINISTIC])
def test_random_strategies_follow_the_generator(models, case):
    a, b, c = run(models, case, seed=0), run(models, case, seed=0), run(models, case, seed=1)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.decode_step, b.decode_step)
    assert not torch.equal(a.decode_step, c.decode_step)


@pytest.mark.parametrize("case", FIXED_COUNT)
def test_schedule_unmasks_planned_counts(models, case):
    # logits_eos_inf: no row stops early, so every block runs its whole schedule
    r = run(models, case, logits_eos_inf=True)
    cfg, rule = r.config, CASES[case][3]
    assert r.response_mask.all()
    num_blocks = cfg.gen_length // cfg.block_length
    steps_per_block = [cfg.steps // num_blocks + (b < cfg.steps % num_blocks) for b in range(num_blocks)]
    forced_first = case in ("dream_prefix",)  # shifted logits + cache: step 0 decodes the first token
    expected = []
    for n_steps in steps_per_block:
        if forced_first:
            counts = [1] + planned_counts(rule, cfg.block_length - 1, n_steps, cfg.eps, first_step=1)
        elif case == "first_hitting":
            counts = [1] * cfg.block_length
        else:
            counts = planned_counts(rule, cfg.block_length, n_steps, cfg.eps)
        expected += [c for c in counts if c > 0]  # a step that plans nothing runs no forward
    assert sum(expected) == cfg.gen_length
    for n in range(len(r)):
        per_step = Counter(r.decode_step[n].tolist())
        assert [per_step[s] for s in range(len(per_step))] == expected


@pytest.mark.parametrize("case", DETERMINISTIC)
def test_batched_equals_alone(models, case):
    batched = run(models, case)
    for i, p in enumerate(PROMPTS):
        alone = run(models, case, prompts=[p])
        assert torch.equal(batched.response_ids[i], alone.response_ids[0]), f"prompt {i}"
        assert torch.equal(batched.decode_step[i], alone.decode_step[0]), f"prompt {i}"
        torch.testing.assert_close(batched.confidence[i], alone.confidence[0], equal_nan=True, rtol=1e-4, atol=1e-6)


def test_parallel_rules_decode_several_tokens_per_step(models):
    # the sharpened tiny models are confident enough for the threshold to accept > 1 token a step
    for case in ("llada_threshold", "llada_factor_dual", "dream_dual_threshold", "sdar_dynamic"):
        r = run(models, case, logits_eos_inf=True)
        assert r.nfe < r.config.gen_length, case
        assert max(Counter(r.decode_step[0].tolist()).values()) > 1, case


def test_sequential_goes_left_to_right(models):
    r = run(models, "sdar_sequential", logits_eos_inf=True)
    for n in range(len(r)):
        assert torch.equal(r.decode_step[n], r.decode_step[n].sort().values)


def test_sdar_forward_count(models):
    # prefill + (steps per block) per block + a commit forward after every block but the last
    r = run(models, "sdar_static", logits_eos_inf=True)
    blocks = 16 // 4
    assert r.nfe == 1 + 8 + (blocks - 1)
    r = run(models, "sdar_no_cache", logits_eos_inf=True)
    assert r.nfe == 8


def test_num_generations_and_prompt_pairs(models):
    cfg = SamplingConfig(algorithm="llada", num_generations=3, temperature=1.0, **G16)
    r = generate(models["llada"], PROMPTS[:2], cfg, torch.Generator().manual_seed(0))
    assert len(r) == 6 and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert not torch.equal(r.response_ids[0], r.response_ids[1])  # independent samples
    # a right-padded (input_ids, attention_mask) pair is re-padded on the left: same result
    ids = torch.tensor([PROMPTS[0] + [0] * 4, PROMPTS[1]])
    mask = torch.tensor([[1] * 3 + [0] * 4, [1] * 7])
    r2 = generate(models["llada"], (ids, mask), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(r.sequences, r2.sequences)
