"""Bad sampling configurations fail before any forward pass, with a ValueError naming the field."""

from __future__ import annotations

import pytest
from sampling_helpers import PROMPTS

from dare.models import tiny
from dare.sampling import SAMPLERS, SamplingConfig, generate
from dare.sampling.base import Sampler

BAD = [
    (dict(gen_length=16, block_length=5), "block_length=5"),
    (dict(gen_length=16, block_length=4, steps=3), "steps=3"),
    (dict(algorithm="beam_search"), "known: dream, few_step, first_hitting, llada, llada2, rgas, sdar"),
    (dict(algorithm="lada"), "did you mean 'llada'"),
    (dict(threshold=0.0), "threshold=0.0"),
    (dict(threshold=1.5), "threshold=1.5"),
    (dict(factor=-1.0), "factor=-1.0"),
    (dict(threshold=0.9, factor=1.0), "choose one"),
    (dict(temperature=-0.1), "temperature=-0.1"),
    (dict(algorithm="dream", top_p=0.0), "top_p=0.0"),
    (dict(algorithm="dream", eps=1.0), "eps=1.0"),
    (dict(gen_length=0), "gen_length=0"),
    (dict(num_generations=0), "num_generations=0"),
    (dict(remasking="entropy"), "remasking='entropy'"),
    (dict(cache="block"), "cache='block'"),
    (dict(algorithm="sdar", cfg_scale=1.0), "cfg_scale=1.0 is not used by algorithm 'sdar'"),
    (dict(algorithm="llada", top_k=5), "top_k=5 is not used"),
    (dict(algorithm="llada", remasking="random", threshold=0.9), "threshold"),
    (dict(algorithm="dream", remasking="entropy", threshold=0.9), "threshold"),
    (dict(algorithm="dream", remasking="origin", alg_temp=0.5), "alg_temp=0.5"),
    (dict(algorithm="sdar", remasking="low_confidence_dynamic"), "threshold"),
    (dict(algorithm="sdar", threshold=0.9), "threshold=0.9"),
    (dict(algorithm="first_hitting", gen_length=8, steps=4), "steps=4"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        SamplingConfig(**kwargs)


def _count_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(
    ("family", "kwargs", "message"),
    [
        ("llada", dict(algorithm="sdar"), "block-attention models"),
        ("sdar", dict(algorithm="llada"), "full-attention models"),
        ("sdar", dict(algorithm="sdar", block_length=6, gen_length=12), "block_length=6 must be a multiple"),
        ("sdar", dict(algorithm="sdar", gen_length=16, steps=2), "steps=2"),  # 4 blocks of block_size 4
    ],
)
def test_config_checked_against_the_model_before_compute(family, kwargs, message):
    model = tiny(family)
    calls = _count_forwards(model)
    with pytest.raises(ValueError, match=message):
        generate(model, PROMPTS, SamplingConfig(**kwargs))
    assert not calls


def test_model_without_mask_id_fails_before_compute():
    model = tiny("llada")
    model.config.mask_token_id = None
    calls = _count_forwards(model)
    with pytest.raises(ValueError, match="mask_token_id"):
        generate(model, PROMPTS, SamplingConfig(gen_length=8))
    assert not calls


@pytest.mark.parametrize(
    ("prompts", "message"), [([], "empty batch"), ([[1, 2], []], "no tokens"), ("text", "list of token-id lists")]
)
def test_bad_prompts(prompts, message):
    model = tiny("llada")
    calls = _count_forwards(model)
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, SamplingConfig(gen_length=8))
    assert not calls


def test_defaults_are_resolved_and_visible():
    cfg = SamplingConfig(algorithm="dream", gen_length=64)
    assert (cfg.steps, cfg.remasking, cfg.cache) == (64, "entropy", "none")
    sdar = SamplingConfig(algorithm="sdar", gen_length=16).for_model(tiny("sdar").diffusion_spec())
    assert (sdar.block_length, sdar.cache, sdar.remasking) == (4, "block", "low_confidence_static")
    llada = SamplingConfig(gen_length=16).for_model(tiny("llada").diffusion_spec())
    assert llada.block_length == 16 and llada.num_blocks == 1


def test_registry_refuses_a_second_sampler_under_a_taken_name():
    class Other(Sampler):
        name = "llada"

    with pytest.raises(ValueError, match="already registered"):
        SAMPLERS.register("llada", Other)
