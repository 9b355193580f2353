"""CJ-GRPO's samplers on the llada sampler: ASS (`schedule: ascending`) and EOSER (`eos_gamma`).

- token identity with an independent re-implementation of the official procedure
  (yjyddq/EOSER-ASS-RL `eval/generate.py` `eoser_generate` / `ass_generate` / `eoser_ass_generate`,
  one block, written here from its facts), greedy and T = 1 with a fixed generator, several
  prompts, EOSER on / off x ASS on / off;
- the schedule and the EOSER factor by hand;
- EOSER commits eos later on a model biased to eos;
- the config checks name the field.
The trajectory replay with ASS is in tests/algorithms/test_cj_grpo.py, compiled == eager in
test_sampling_static.py, the engine invariants in test_sampling_algorithms.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from sampling_helpers import sharp_tiny

from dare.sampling import SamplingConfig, generate
from dare.sampling.ops import (
    STEP_SCHEDULES,
    ascending_progress,
    end_confidence_factor,
    linear_progress,
    planned_counts,
)

PROMPTS3 = [[5, 9, 11], [7, 3, 21], [17, 40, 8]]  # one length: the official code takes an unpadded batch
GEN = 16


@pytest.fixture(scope="module")
def eos_model() -> torch.nn.Module:
    """A tiny LLaDA that, like a trained one, is sure the last half of a 16-token response is eos
    (the eos logit of the last 8 columns raised by 50): without EOSER that tail is committed
    first."""
    model = sharp_tiny("llada")
    eos = model.diffusion_spec().eos_token_id

    def eos_tail(module, args, out):
        out.logits[:, -GEN // 2 :, eos] += 50.0
        return out

    model.register_forward_hook(eos_tail)
    return model


# --- the official procedure, written from its facts (one block: block_num 1 / block_length = gen_length)


def official_counts(gen_length: int, steps: int, ass: bool) -> list[int]:
    if not ass:  # get_num_transfer_tokens: the even split, remainder to the first steps
        base, rem = divmod(gen_length, steps)
        return [base + (i < rem) for i in range(steps)]
    S = int(math.log2(gen_length))
    assert steps == S  # the official asserts gen_length >= 2^steps and indexes steps 0..S-1
    return [2**i for i in range(S - 1)] + [gen_length - (2 ** (S - 1) - 1)]


def official_factor(i: int, steps: int, ass: bool, gamma: tuple[float, float]) -> float:
    low, high = gamma
    if steps <= 1:
        return high
    t = (2 ** (i + 1) - 1) / 2**steps if ass else min(max(i, 0), steps - 1) / (steps - 1)
    return low + (high - low) * t


@torch.no_grad()
def official_decode(model, prompts, gen_length, steps, temperature, generator, ass, gamma):
    """The official loop in float64. Two deliberate alignments with dare, both documented: the
    Gumbel noise is drawn for the response columns in float64 from `generator` (the official draws
    float32 noise for the whole sequence), and the mask id's logit is -inf (the official relies on
    a trained model never predicting it)."""
    spec = model.diffusion_spec()
    prompt = torch.tensor(prompts)
    P = prompt.shape[1]
    x = torch.cat([prompt, torch.full((len(prompts), gen_length), spec.mask_token_id)], 1)
    for i, k in enumerate(official_counts(gen_length, steps, ass)):
        mask_index = x == spec.mask_token_id
        logits = model(x).logits.double()
        logits[..., spec.mask_token_id] = -math.inf
        if temperature > 0:
            u = torch.rand(logits[:, P:].shape, dtype=torch.float64, generator=generator)
            noisy = logits.clone()
            noisy[:, P:] = logits[:, P:].exp() / (-torch.log(u)) ** temperature
            x0 = noisy.argmax(-1)
        else:
            x0 = logits.argmax(-1)
        x0_p = logits.softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
        if gamma is not None:
            x0_p = torch.where(x0 == spec.eos_token_id, x0_p * official_factor(i, steps, ass, gamma), x0_p)
        confidence = torch.where(mask_index, x0_p, -math.inf)
        for j in range(x.shape[0]):
            _, idx = torch.topk(confidence[j], k=k)
            x[j, idx] = x0[j, idx]
    return x[:, P:]


def up_to_first_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


MODES = {  # (ass, eos_gamma)
    "plain": (False, None),
    "eoser": (False, (0.01, 1.0)),
    "ass": (True, None),
    "eoser_ass": (True, (0.01, 1.0)),
}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("mode", list(MODES))
def test_tokens_equal_the_official_procedure(eos_model, mode, temperature):
    ass, gamma = MODES[mode]
    steps = 4 if ass else 8
    G = 2 if temperature > 0 else 1
    cfg = SamplingConfig(
        gen_length=GEN, steps=steps, temperature=temperature, num_generations=G,
        schedule="ascending" if ass else "linear", eos_gamma=gamma,
    )  # fmt: skip
    ours = generate(eos_model, PROMPTS3, cfg, torch.Generator().manual_seed(3))
    rows = [p for p in PROMPTS3 for _ in range(G)]
    ref = official_decode(eos_model, rows, GEN, steps, temperature, torch.Generator().manual_seed(3), ass, gamma)
    eos = eos_model.diffusion_spec().eos_token_id
    # dare stops a row at its first eos once everything before it is decoded (the tail becomes eos)
    for n in range(len(rows)):
        assert up_to_first_eos(ours.response_ids[n].tolist(), eos) == up_to_first_eos(ref[n].tolist(), eos), n
    # not a trivial comparison: eos is committed somewhere, and most rows keep several tokens
    assert (ours.response_ids == eos).any()
    assert int(ours.response_mask.sum(-1).ge(4).sum()) >= len(rows) // 2


def test_ascending_schedule_by_hand():
    assert planned_counts("ascending", 8, 3) == [1, 2, 5]  # the last step takes 2^(S-1) + 1
    assert planned_counts("ascending", 16, 4) == [1, 2, 4, 9]
    assert planned_counts("ascending", 12, 3) == [1, 2, 9]  # not a power of two: the rest at the end
    assert planned_counts("ascending", 2, 1) == [2]
    count = STEP_SCHEDULES.get("ascending").count
    assert count(torch.tensor([3, 1]), 2, 4).tolist() == [3, 1]  # a row short of masks takes what is left
    assert STEP_SCHEDULES.get("ascending").steps_per_block(128) == 7
    assert STEP_SCHEDULES.get("linear").steps_per_block(128) is None


def test_the_sampler_follows_the_ascending_schedule_in_every_block(eos_model):
    # logits_eos_inf: no row stops early; two blocks of 8 run 1, 2, 5 each
    cfg = SamplingConfig(gen_length=16, block_length=8, steps=6, schedule="ascending", logits_eos_inf=True)
    r = generate(eos_model, PROMPTS3, cfg)
    for n in range(len(PROMPTS3)):
        assert torch.bincount(r.decode_step[n]).tolist() == [1, 2, 5, 1, 2, 5]
    assert r.nfe == 6


def test_eoser_factor_by_hand():
    g = (0.01, 1.0)
    # linear: step / (steps - 1); one step: gamma_max (the official `total_steps > 1` guard)
    assert [end_confidence_factor(g, linear_progress(i, 3)) for i in range(3)] == pytest.approx([0.01, 0.505, 1.0])
    assert end_confidence_factor(g, linear_progress(0, 1)) == 1.0
    # ascending, S = 3: (2^(i+1) - 1) / 8 = 1/8, 3/8, 7/8
    want = [0.01 + 0.99 * t for t in (1 / 8, 3 / 8, 7 / 8)]
    assert [end_confidence_factor(g, ascending_progress(i, 3)) for i in range(3)] == pytest.approx(want)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("ass", [False, True])
def test_eoser_commits_eos_later(eos_model, ass, temperature):
    steps = 4 if ass else 8
    kw = dict(gen_length=GEN, steps=steps, schedule="ascending" if ass else "linear", temperature=temperature)
    kw.update(num_generations=2, record_steps=True)
    eos = eos_model.diffusion_spec().eos_token_id

    def eos_before_each_step(gamma) -> list[float]:
        r = generate(eos_model, PROMPTS3, SamplingConfig(eos_gamma=gamma, **kw), torch.Generator().manual_seed(0))
        return (r.extras["step_state"] == eos).sum(-1).double().mean(0).tolist()  # mean over rows, [steps]

    off, on = eos_before_each_step(None), eos_before_each_step((0.01, 1.0))
    # without EOSER the sure eos tail goes first (linear: 2 a step; ascending: 1, 2, 4); with it, eos
    # waits until the content is committed
    assert off[: steps // 2 + 1] == ([0.0, 2.0, 4.0, 6.0, 8.0] if not ass else [0.0, 1.0, 3.0])
    assert all(a <= b for a, b in zip(on, off)) and sum(on) < 0.6 * sum(off)
    assert on[:2] == [0.0, 0.0]


BAD = [
    (dict(gen_length=8, schedule="ascending"), "steps=8: schedule='ascending' takes 3 step"),
    (dict(gen_length=16, block_length=8, steps=3, schedule="ascending"), "set steps=6"),
    (dict(gen_length=8, block_length=1, steps=8, schedule="ascending"), "block_length=1"),
    (dict(schedule="exponential"), "schedule: unknown step schedule 'exponential'"),
    (dict(gen_length=8, steps=3, schedule="ascending", threshold=0.9), "threshold: schedule='ascending'"),
    (dict(algorithm="dream", gen_length=8, steps=3, schedule="ascending"), "schedule='ascending' is not used"),
    (dict(eos_gamma=(0.0, 1.0)), r"eos_gamma=\(0.0, 1.0\): must be a pair"),
    (dict(eos_gamma=[0.5, 1.5]), r"eos_gamma=\[0.5, 1.5\]"),
    (dict(eos_gamma=[0.9, 0.1]), "gamma_min <= gamma_max"),
    (dict(eos_gamma=0.4), "eos_gamma=0.4"),
    (dict(eos_gamma=[0.1, 1.0], remasking="random"), "remasking='random' has none"),
    (dict(eos_gamma=[0.1, 1.0], threshold=0.9), "data-dependent"),
    (dict(eos_gamma=[0.1, 1.0], confidence_eos_eot_inf=True), "choose one"),
    (dict(algorithm="sdar", eos_gamma=[0.1, 1.0]), "eos_gamma=.* is not used by algorithm 'sdar'"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_cj_grpo_sampler_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_a_yaml_list_is_stored_as_a_pair():
    cfg = SamplingConfig(gen_length=8, steps=3, schedule="ascending", eos_gamma=[0.01, 1])
    assert cfg.eos_gamma == (0.01, 1.0)
    assert SamplingConfig(**{**cfg.__dict__}) == cfg  # a resolved config re-validates
