"""MDPO's Running Confidence Remasking (`remasking: rcr` of the llada sampler; arXiv 2508.13148,
official autonomousvision/mdpo `src/mdlm_generation_utils.py` `diffusion_generate(rcr=True)`).

- a scripted model: a token committed early with a low confidence goes back to mask and is
  redrawn under RCR, while low_confidence keeps it; the tokens held after each step follow the
  schedule;
- the held count per step on a tiny model, one block and two, and tokens of finished blocks going
  back to mask (the official ranks every decoded token);
- token identity with an independent re-implementation of the official loop (written here from its
  facts), greedy and T = 1 with a fixed generator, one block and two;
- determinism, the generator, refusals at config and recipe load, and no resume.
The generic invariants (no mask left, prompt untouched, batched == alone, sync_every, compiled ==
eager) run over the `llada_rcr` cases of test_sampling_algorithms.py / test_sampling_static.py.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import yaml
from sampling_helpers import PROMPTS, sharp_tiny

from dare.cli import main
from dare.models.spec import DiffusionSpec
from dare.sampling import SamplingConfig, generate
from dare.sampling.generate import check_resumable
from dare.sampling.ops import planned_counts

MASK, EOS, PAD, V = 9, 8, 7, 10


class ScriptedModel(torch.nn.Module):
    """A 4-token response after a 1-token prompt. Each masked response position r predicts one
    token with a probability that depends on what is decoded (the rest spread evenly):
      r0: token 5 at 0.99 once r1 is decoded, else token 4 at 0.40 (an early, weak guess);
      r1: token 1 at 0.95 once anything is decoded, else at 0.35;
      r2: token 2 at 0.90 once anything is decoded, else at 0.30;
      r3: token 3 at 0.20.
    At step 0 r0 (0.40) is the most confident, so it is committed first."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # `generate` reads the device from a parameter

    def diffusion_spec(self) -> DiffusionSpec:
        return DiffusionSpec(MASK, False, "full", None, (EOS,), PAD)

    @staticmethod
    def _logits(token: int, p: float) -> torch.Tensor:
        probs = torch.full((V,), (1 - p) / (V - 2), dtype=torch.float64)
        probs[token], probs[MASK] = p, 1e-30
        return probs.log()

    def forward(self, input_ids: torch.Tensor, **kwargs) -> SimpleNamespace:
        N, T = input_ids.shape
        logits = torch.zeros(N, T, V, dtype=torch.float64)
        for n in range(N):
            r = input_ids[n, 1:] != MASK  # [4] decoded response positions
            table = [(5, 0.99) if r[1] else (4, 0.40), (1, 0.95 if r.any() else 0.35),
                     (2, 0.90 if r.any() else 0.30), (3, 0.20)]  # fmt: skip
            for i, (tok, p) in enumerate(table):
                logits[n, 1 + i] = self._logits(tok, p)
        return SimpleNamespace(logits=logits)


def scripted(remasking: str):
    cfg = SamplingConfig(gen_length=4, steps=4, remasking=remasking, record_steps=True)
    return generate(ScriptedModel(), [[0]], cfg)


def test_rcr_remasks_an_early_low_confidence_token_that_low_confidence_keeps():
    keep, rcr = scripted("low_confidence"), scripted("rcr")
    # low_confidence: r0's early guess (token 4) stays, one commit a step left to right
    assert keep.response_ids[0].tolist() == [4, 1, 2, 3]
    assert keep.decode_step[0].tolist() == [0, 1, 2, 3]
    # RCR: step 1 holds the two best of {r0: 0.40 (running), r1: 0.95, r2: 0.90, r3: 0.20}, so r0
    # goes back to mask; at step 2 it is redrawn as token 5 at 0.99 (r1 is decoded now)
    assert rcr.response_ids[0].tolist() == [5, 1, 2, 3]
    assert rcr.decode_step[0].tolist() == [2, 1, 1, 3]
    states = rcr.extras["step_state"][0].tolist()  # [steps, 4], the response before each step
    assert states == [[MASK] * 4, [4, MASK, MASK, MASK], [MASK, 1, 2, MASK], [5, 1, 2, MASK]]
    # the trajectory holds the last draw: r0's probability is that of token 5
    torch.testing.assert_close(rcr.confidence[0], torch.tensor([0.99, 0.95, 0.90, 0.20], dtype=torch.float64))


def test_rcr_holds_the_scheduled_count_after_every_step_of_the_scripted_model():
    held = lambda r: (r.extras["step_state"][0] != MASK).sum(-1).tolist()  # noqa: E731  before each step
    for remasking in ("low_confidence", "rcr"):
        r = scripted(remasking)
        assert held(r) == [0, 1, 2, 3]  # + the last step's one token = 4


def held_before_steps(r) -> torch.Tensor:
    """Decoded response tokens before each step `[N, S]`."""
    return (r.extras["step_state"] != 63).sum(-1)


@pytest.mark.parametrize("block_length", [16, 8])
def test_rcr_held_counts_follow_the_schedule_and_tokens_go_back_to_mask(block_length):
    model = sharp_tiny("llada")
    steps = 6  # linear counts: one block [3, 3, 3, 3, 2, 2]; two blocks [3, 3, 2] each
    cfg = SamplingConfig(gen_length=16, block_length=block_length, steps=steps, remasking="rcr",
                         record_steps=True, logits_eos_inf=True)  # fmt: skip
    r = generate(model, PROMPTS, cfg)
    blocks = 16 // block_length
    counts = planned_counts("linear", block_length, steps // blocks) * blocks
    want = [sum(counts[:t]) for t in range(steps)]
    assert held_before_steps(r).tolist() == [want] * len(PROMPTS)
    assert not (r.response_ids == 63).any() and r.response_mask.all()
    # not a trivial schedule: some decoded token goes back to mask at a later step
    s = r.extras["step_state"]  # [N, S, L]
    remasked = (s[:, :-1] != 63) & (s[:, 1:] == 63)
    assert remasked.any()
    if block_length == 8:  # a token of the first block goes back to mask while the second is decoded
        assert remasked[:, 3:, :8].any()
        assert (r.decode_step[:, :8] >= 3).any()


def test_rcr_greedy_is_deterministic_and_sampling_follows_the_generator():
    model = sharp_tiny("llada")
    greedy = SamplingConfig(gen_length=16, steps=8, remasking="rcr")
    a = generate(model, PROMPTS, greedy, torch.Generator().manual_seed(0))
    b = generate(model, PROMPTS, greedy, torch.Generator().manual_seed(5))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.decode_step, b.decode_step)
    assert a.nfe == 8  # one forward per step
    sampled = SamplingConfig(gen_length=16, steps=8, remasking="rcr", temperature=1.0)
    c, d, e = (generate(model, PROMPTS, sampled, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert torch.equal(c.response_ids, d.response_ids) and torch.equal(c.decode_step, d.decode_step)
    assert not torch.equal(c.response_ids, e.response_ids)
    # RCR is not low_confidence under another name
    low = generate(model, PROMPTS, SamplingConfig(gen_length=16, steps=8), torch.Generator().manual_seed(0))
    assert not torch.equal(low.response_ids, a.response_ids)


# --- the official loop, written from its facts (conf_alg "llada", mode "linear", top_p / top_k off)


def maskgit_linear_counts(total: int, steps: int) -> list[int]:
    """`get_num_transfer_tokens_maskgit(mode="linear")`: total - floor(total * (1 - (t+1)/steps))
    tokens held after step t (the mask ratio clipped at 1e-6), as per-step counts."""
    held = [total - math.floor(total * max(1 - (t + 1) / steps, 1e-6)) for t in range(steps)]
    return [held[0]] + [b - a for a, b in zip(held, held[1:])]


@torch.no_grad()
def official_rcr(model, prompts, gen_length, block_length, steps, temperature, generator):
    """`diffusion_generate(rcr=True)` in float64. Deliberate alignments with dare: x0 is drawn by
    Gumbel-max with float64 noise for the columns [response start, block end) from `generator`
    (the official draws torch.distributions.Categorical(p) on the global RNG: the same distribution),
    and the mask id's logit is -inf. Everything else as the official: confidence p(x0) with
    p = softmax(logits / T); each step fills every masked position up to the block end, then sends
    back to mask the positions of lowest running confidence over the whole row (prompt and
    never-decoded positions at 1.0), as many as the schedule leaves masked."""
    prompt = torch.tensor(prompts)
    N, P = prompt.shape
    x = torch.cat([prompt, torch.full((N, gen_length), 63)], 1)
    overtime = torch.zeros(x.shape, dtype=torch.float64)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for b in range(num_blocks):
        end = P + (b + 1) * block_length
        counts = maskgit_linear_counts(block_length, per_block)
        for i in range(per_block):
            mask_index = x == 63
            logits = model(x).logits.double()
            logits[..., 63] = -math.inf
            if temperature > 0:
                logits = logits / temperature
            p = logits.softmax(-1)
            x0 = p.argmax(-1)
            if temperature > 0:
                u = torch.rand((N, end - P, logits.shape[-1]), dtype=torch.float64, generator=generator)
                x0[:, P:end] = (logits[:, P:end] - torch.log(-torch.log(u))).argmax(-1)
            confidence = p.gather(-1, x0[..., None]).squeeze(-1)
            confidence[:, end:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, confidence, -math.inf)
            for j in range(N):
                _, fill = torch.topk(confidence[j], k=sum(counts[i:]))
                x[j, fill] = x0[j, fill]
                overtime[j, fill] = confidence[j, fill]
                if i != per_block - 1:
                    ranked = torch.where(overtime[j] == 0.0, 1.0, overtime[j])
                    _, back = torch.topk(ranked, k=sum(counts[i + 1 :]), largest=False)
                    x[j, back] = 63
    return x[:, P:]


def up_to_first_eos(row: list[int], eos: int = 62) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def test_maskgit_linear_counts_match_dare_linear_when_steps_divide_the_block():
    # the official schedule: dare's linear counts when the steps divide the block (the cases below)
    assert maskgit_linear_counts(16, 8) == planned_counts("linear", 16, 8) == [2] * 8
    assert maskgit_linear_counts(8, 4) == planned_counts("linear", 8, 4) == [2] * 4
    # otherwise they differ (documented): MaskGIT [3, 2, 3, 2], the even split [3, 3, 2, 2]
    assert maskgit_linear_counts(10, 4) == [3, 2, 3, 2] and planned_counts("linear", 10, 4) == [3, 3, 2, 2]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("block_length", [16, 8])
def test_tokens_equal_the_official_rcr_loop(block_length, temperature):
    model = sharp_tiny("llada")
    prompts = [[5, 9, 11], [7, 3, 21], [17, 40, 8]]  # one length: the official code takes an unpadded batch
    G = 2 if temperature > 0 else 1
    cfg = SamplingConfig(gen_length=16, block_length=block_length, steps=8, temperature=temperature,
                         num_generations=G, remasking="rcr")  # fmt: skip
    ours = generate(model, prompts, cfg, torch.Generator().manual_seed(3))
    rows = [p for p in prompts for _ in range(G)]
    ref = official_rcr(model, rows, 16, block_length, 8, temperature, torch.Generator().manual_seed(3))
    for n in range(len(rows)):
        assert up_to_first_eos(ours.response_ids[n].tolist()) == up_to_first_eos(ref[n].tolist()), n
    # not a trivial comparison: the responses are long and differ from low_confidence's
    assert int(ours.response_mask.sum(-1).min()) >= 4
    low = generate(model, prompts, SamplingConfig(**{**cfg.__dict__, "remasking": "low_confidence"}),
                   torch.Generator().manual_seed(3))  # fmt: skip
    assert not torch.equal(low.response_ids, ours.response_ids)


# --- refusals


BAD = [
    (dict(remasking="rcr", threshold=0.9), "threshold: remasking='rcr' holds the schedule's count"),
    (dict(remasking="rcr", factor=1.0), "factor: remasking='rcr'"),
    (dict(remasking="rcr", cache="prefix"), "cache='prefix': remasking='rcr' may send any decoded token"),
    (dict(remasking="rcr", cache="dual"), "cache='dual'"),
    (dict(remasking="rcr_typo"), "remasking='rcr_typo' is not a strategy of algorithm 'llada'"),
    (dict(algorithm="dream", remasking="rcr"), "remasking='rcr' is not a strategy of algorithm 'dream'"),
    (dict(algorithm="sdar", remasking="rcr"), "remasking='rcr' is not a strategy of algorithm 'sdar'"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_rcr_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SamplingConfig(**kwargs)


def test_rcr_cannot_resume_a_partial_response():
    with pytest.raises(ValueError, match="remasking='rcr'.*cannot resume"):
        check_resumable(SamplingConfig(remasking="rcr", gen_length=8, block_length=8))
    check_resumable(SamplingConfig(gen_length=8, block_length=8))  # low_confidence can


@pytest.mark.parametrize(
    "sampling,message",
    [({"remasking": "rcr", "cache": "dual"}, "cache='dual': remasking='rcr'"),
     ({"remasking": "rcrr"}, "remasking='rcrr' is not a strategy")],
)  # fmt: skip
def test_recipe_load_names_the_key(tmp_path, capsys, sampling, message):
    recipe = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": 12},
        "stages": [{"kind": "rl", "algorithm": "d1", "steps": 2, "batch_size": 2, "num_generations": 2,
                    "sampling": {"algorithm": "llada", "steps": 12, "temperature": 1.0, **sampling}}],
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dare: error: {path}: stages[0].sampling"), err
    assert message in err, err
    # the same recipe with plain RCR is valid
    recipe["stages"][0]["sampling"] = {"algorithm": "llada", "steps": 12, "temperature": 1.0, "remasking": "rcr"}
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--dry-run"]) == 0, capsys.readouterr().err
