"""Per-sequence stopping at EOS, the Rollout fields, and the `dare generate` command."""

from __future__ import annotations

import math

import torch
from sampling_helpers import PROMPTS

from dare.cli import main
from dare.models import tiny
from dare.sampling import SamplingConfig, generate
from dare.sampling.engine import DecodeState, prepare_prompts

CFG = dict(algorithm="llada", gen_length=16, block_length=4, steps=8)


def test_response_stops_at_the_first_end_token(models):
    model = models["llada"]
    free = generate(model, PROMPTS, SamplingConfig(logits_eos_inf=True, **CFG))
    # declare a token the model emits mid-response an end token: rows stop there
    stop = int(free.response_ids[0, 5])
    r = generate(model, PROMPTS, SamplingConfig(extra_eos_token_ids=(stop,), **CFG))
    eos = model.diffusion_spec().eos_token_id
    for n in range(len(r)):
        is_end = (r.response_ids[n] == stop) | (r.response_ids[n] == eos)
        first = int(is_end.long().argmax()) if is_end.any() else 16
        assert r.response_mask[n].tolist() == [i <= first for i in range(16)]
        assert (r.response_ids[n, first + 1 :] == eos).all()
        assert (r.decode_step[n, first + 1 :] == -1).all() and r.confidence[n, first + 1 :].isnan().all()
        # nothing before the end token depends on having stopped
        if not (free.response_ids[n, : first + 1] == eos).any():
            assert torch.equal(r.response_ids[n, : first + 1], free.response_ids[n, : first + 1])
    assert torch.equal(r.attention_mask, torch.cat([r.prompt_mask, r.response_mask], 1))
    assert r.num_tokens == int(r.response_mask.sum()) < free.num_tokens
    # a row that stops in an early block skips the later blocks
    alone = generate(model, [PROMPTS[0]], SamplingConfig(extra_eos_token_ids=(stop,), **CFG))
    assert alone.nfe < free.nfe


def test_a_row_is_finished_only_when_everything_before_its_eos_is_decoded():
    spec = tiny("llada").diffusion_spec()
    batch = prepare_prompts([[1, 2], [3]], spec, 1, torch.device("cpu"))
    state = DecodeState(batch, 6, spec, spec.eos_token_ids)
    M, E = spec.mask_token_id, spec.eos_token_id
    state.response[:] = torch.tensor([[M, 4, E, M, M, M], [5, 4, E, M, 9, M]])
    state.update_finished()
    assert state.finished.tolist() == [False, True]
    assert state.response[1].tolist() == [5, 4, E, E, 9, E]  # remaining masks become eos
    assert state.response[0].tolist() == [M, 4, E, M, M, M]


def test_rollout_fields(models):
    r = generate(models["dream"], PROMPTS, SamplingConfig(logits_eos_inf=True, **{**CFG, "algorithm": "dream"}))
    N, P = len(PROMPTS), max(map(len, PROMPTS))
    assert r.sequences.shape == (N, P + 16) and r.prompt_ids.shape == (N, P)
    assert r.prompt_mask.sum(-1).tolist() == [len(p) for p in PROMPTS]
    assert r.prompt_ids[2, : P - 1].eq(models["dream"].diffusion_spec().pad_token_id).all()  # left padding
    assert r.decode_step.dtype == torch.long and r.confidence.dtype == torch.float64
    assert r.nfe_per_token == r.nfe / (N * 16) and not math.isnan(r.tokens_per_second)
    assert r.config.remasking == "entropy" and r.config.block_length == 4


def test_cli_generate_tiny(capsys):
    rc = main(["generate", "--model", "tiny:llada", "--prompt", "hi", "--prompt", "abc", "--gen-length", "8",
               "--steps", "4", "--block-length", "4", "--num-generations", "2", "--temperature", "0.7"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("--- prompt") == 4 and "tokens/s" in out and "forward passes" in out


def test_cli_generate_sdar_and_errors(capsys):
    assert main(["generate", "--model", "tiny:sdar", "--algorithm", "sdar", "--prompt", "x", "--gen-length", "8",
                 "--no-chat-template"]) == 0  # fmt: skip
    assert (
        main(["generate", "--model", "tiny:llada", "--prompt", "x", "--gen-length", "10", "--block-length", "4"]) == 2
    )
    assert "gen_length=10 is not divisible by block_length=4" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny:gpt", "--prompt", "x"]) == 2


def test_cli_generate_from_a_checkpoint_folder(tmp_path, capsys):
    from dare.models.tokenizer import build_tokenizer, model_token_ids

    tokenizer = build_tokenizer("abcdefgh ")
    tiny("dream", **model_token_ids(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "--prompt", "abc", "--algorithm", "dream", "--gen-length", "8",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert "dream (remasking=entropy, cache=none)" in capsys.readouterr().out
