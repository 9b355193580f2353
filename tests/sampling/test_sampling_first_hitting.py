"""The first-hitting sampler is exact: its samples follow the model's true joint distribution
(reveal one uniformly chosen masked position at a time). On a tiny model with 6 usable tokens and
gen_length 2, the exact joint is enumerated from the model and compared by a chi-square
goodness-of-fit test with

- first_hitting (the sampler under test),
- LLaDA `random` remasking at one token per step (ancestral sampling of the same process),
- and a negative control that must fail: both tokens drawn at once, independently (one step), to
  show the test can tell the difference.

Fixed seeds make the test deterministic; the thresholds (p > 1e-3 to pass, p < 1e-6 to reject)
leave a wide margin either way.
"""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import sharp_tiny

from dare.sampling import SamplingConfig, generate

PROMPT = [0, 1, 2]
V, USABLE = 8, 6  # mask 7, eos 6 (suppressed with logits_eos_inf): tokens 0..5 remain
N_SAMPLES = 4000


@pytest.fixture(scope="module")
def model():
    # scale 6: peaked enough for a strong dependence between the two positions
    return sharp_tiny("llada", seed=3, scale=6.0, vocab_size=V)


def exact_joint(model) -> torch.Tensor:
    """P(x1 = a, x2 = b) `[6, 6]`: with prob 1/2 position 1 is revealed first, else position 2."""

    def probs(x: list[int]) -> torch.Tensor:  # [2, USABLE] for the two response positions
        logits = model(torch.tensor([PROMPT + x])).logits[0, len(PROMPT) :].double()
        return logits[:, :USABLE].softmax(-1)

    with torch.no_grad():
        mm = probs([7, 7])
        p2_given_a = torch.stack([probs([a, 7])[1] for a in range(USABLE)])  # [a, b]
        p1_given_b = torch.stack([probs([7, b])[0] for b in range(USABLE)])  # [b, a]
    return 0.5 * mm[0][:, None] * p2_given_a + 0.5 * mm[1][None, :] * p1_given_b.T


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness-of-fit p-value; cells expecting < 5 samples are pooled."""
    expected = probs.flatten() * counts.sum()
    counts = counts.flatten().double()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2.0))


def sample_counts(model, seed: int, **cfg) -> torch.Tensor:
    config = SamplingConfig(gen_length=2, temperature=1.0, num_generations=N_SAMPLES, logits_eos_inf=True, **cfg)
    r = generate(model, [PROMPT], config, torch.Generator().manual_seed(seed))
    assert r.response_mask.all()
    ids = r.response_ids[:, 0] * USABLE + r.response_ids[:, 1]
    return torch.bincount(ids, minlength=USABLE * USABLE).reshape(USABLE, USABLE)


def test_first_hitting_matches_the_exact_joint(model):
    joint = exact_joint(model)
    independent = joint.sum(1)[:, None] * joint.sum(0)[None, :]
    assert (joint - independent).abs().sum() / 2 > 0.05, "the model must couple the two positions"

    fhs = sample_counts(model, 0, algorithm="first_hitting")
    assert chi_square_p(fhs, joint) > 1e-3
    ancestral = sample_counts(model, 1, algorithm="llada", remasking="random", steps=2)
    assert chi_square_p(ancestral, joint) > 1e-3
    # negative control: one step unmasks both positions independently -> the wrong joint
    one_step = sample_counts(model, 2, algorithm="llada", remasking="random", steps=1)
    assert chi_square_p(one_step, joint) < 1e-6


def test_hitting_times_decrease(models):
    r = generate(
        models["llada"], [[5, 6, 7]], SamplingConfig(algorithm="first_hitting", gen_length=8, logits_eos_inf=True),
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    times = r.extras["hitting_time"][0]
    order = r.decode_step[0].argsort()
    assert r.nfe == 8
    assert ((times > 0) & (times < 1)).all()
    assert (times[order].diff() < 0).all()  # each event happens earlier in reverse time
