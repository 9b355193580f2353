"""`record_steps`: every denoising step's state, x0-prediction and confidences (what MDPO trains on).

Recording changes no token, and the records are the decode itself: step t's state masks exactly the
response tokens decoded at steps >= t, its prediction holds the token committed at step t where it
committed one, every masked position of the block gets a proposal with a probability, and a decode
that used fewer steps is padded with its final response."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import PROMPTS

from dare.sampling import SamplingConfig, generate
from dare.sampling.engine import STEP_RECORD_KEYS


def _pair(model, **cfg):
    plain = generate(model, PROMPTS, SamplingConfig(**cfg), generator=torch.Generator().manual_seed(0))
    rec = generate(model, PROMPTS, SamplingConfig(record_steps=True, **cfg), generator=torch.Generator().manual_seed(0))
    return plain, rec


@pytest.mark.parametrize(
    "family,extra",
    [
        ("llada", {}),
        ("llada", {"block_length": 4, "cache": "dual"}),
        ("dream", {"cache": "prefix", "block_length": 4}),
        ("sdar", {"block_length": 4}),  # S = 8 steps over its 2 blocks, the block KV cache
        ("sdar", {"block_length": 8, "cache": "none"}),  # one decoding block of 2 model blocks
    ],
)
def test_recording_changes_no_token_and_records_the_decode(models, family, extra):
    cfg = {"algorithm": family, "gen_length": 8, "steps": 8, "temperature": 1.0, "num_generations": 2, **extra}
    plain, rec = _pair(models[family], **cfg)
    assert torch.equal(plain.sequences, rec.sequences) and torch.equal(plain.decode_step, rec.decode_step)
    assert torch.equal(plain.confidence.nan_to_num(-1.0), rec.confidence.nan_to_num(-1.0))
    assert STEP_RECORD_KEYS == ("step_state", "step_prediction", "step_confidence", "step_text_mask")
    state, pred, conf = (rec.extras[k] for k in STEP_RECORD_KEYS[:3])
    N, L = rec.response_ids.shape
    assert state.shape == pred.shape == conf.shape == (N, 8, L) and conf.dtype == torch.float32
    mask_id = models[family].diffusion_spec().mask_token_id
    resp, steps = rec.response_mask, rec.decode_step  # [N, L]
    for t in range(8):
        masked = state[:, t] == mask_id
        # the state step t decoded from: a response token is masked iff it was decoded at step >= t
        assert torch.equal(masked[resp], (steps >= t)[resp]), f"step {t}"
        done = (steps == t) & resp
        assert torch.equal(pred[:, t][done], rec.response_ids[done])  # the committed token is the proposal
        assert torch.equal(state[:, t][~masked], pred[:, t][~masked])  # decoded tokens stay
        has = pred[:, t] != mask_id
        assert bool((conf[:, t][masked & has] > 0).all()) and bool((conf[:, t][~masked] == 0).all())


def test_a_decode_that_stops_early_is_padded_with_its_final_response(models):
    model = models["llada"]
    spec = model.diffusion_spec()
    cfg = {"algorithm": "llada", "gen_length": 8, "steps": 8, "block_length": 2}
    free = generate(model, PROMPTS[:1], SamplingConfig(**cfg))
    stop = int(free.response_ids[0, 1])  # declared an end id: the row ends in its first block
    rec = generate(model, PROMPTS[:1], SamplingConfig(record_steps=True, extra_eos_token_ids=(stop,), **cfg))
    state, pred, conf, text = (rec.extras[k] for k in STEP_RECORD_KEYS)
    assert rec.nfe == 2 and state.shape == (1, 8, 8)  # 2 forward passes, still 8 records
    for t in range(2, 8):  # the final response (its masks became eos), nothing masked, confidence 0
        assert torch.equal(state[0, t], rec.response_ids[0]) and torch.equal(pred[0, t], rec.response_ids[0])
        assert bool((conf[0, t] == 0).all())
    # a prediction's text runs to its first end id, included
    assert text[0, -1].tolist() == [True, True] + [False] * 6
    assert int(pred[0, -1, 1]) == stop and spec.mask_token_id not in pred[0, -1].tolist()


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"algorithm": "llada", "threshold": 0.9}, "record_steps: a parallel-decoding rule"),
        ({"algorithm": "few_step", "steps": 4}, "record_steps=True is not used by algorithm 'few_step'"),
        ({"algorithm": "llada", "record_steps": 1}, "record_steps=1: must be true or false"),
    ],
)
def test_record_steps_is_refused_where_it_cannot_be_honoured(cfg, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{"gen_length": 8, "record_steps": True, **cfg})
