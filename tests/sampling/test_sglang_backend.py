"""The SGLang rollout backend without SGLang (it is not installed here; its torch pin conflicts):
its unmasking rule (SGLang's LowConfidence, ported as a pure function) unmasks the same tokens in
the same order as dare's SDAR rule on hand-built logits; dare's sampling settings map to SGLang's
dLLM algorithm config or are refused by name, at recipe load and at start. The GPU test compares
greedy tokens with dare's sampler when a GPU and SGLang are both present."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from sampling_helpers import PROMPTS, sharp_tiny

from dare.config import RecipeError, build_recipe
from dare.sampling.backend import DareSamplerBackend
from dare.sampling.config import SamplingConfig
from dare.sampling.ops import linear_step_count
from dare.sampling.sdar import SDARPolicy
from dare.sampling.sglang_backend import (
    SGLangBackend,
    check_sampling,
    export_for_sglang,
    import_sglang,
    served_architecture,
    sglang_low_confidence_step,
)

MASK, V, B = 15, 16, 8


def sdar_config(**kw) -> SamplingConfig:
    base = {"algorithm": "sdar", "gen_length": B, "steps": B, "block_length": B, "temperature": 0.0}
    return SamplingConfig(**{**base, **kw})


def hand_built_logits(step: int, rows: int) -> torch.Tensor:
    """`[rows, B, V]`: per step and row a different sharpness, so some steps have several positions
    above the threshold, some one, some none; row 0 has exactly tied confidences (left-most wins)."""
    g = torch.Generator().manual_seed(100 + step)
    scale = torch.tensor([0.0, 1.0, 3.0, 8.0])[:rows, None, None]
    logits = torch.randn(rows, B, V, generator=g, dtype=torch.float64) * scale
    logits[0, :, :] = 0.0
    logits[0, :, step % V] = 1.0  # p = 0.16 at every position of row 0: the same token, the same confidence
    logits[..., MASK] = -torch.inf  # dare removes the mask token before the rule (SGLang: the model does)
    return logits


def dare_step(policy: SDARPolicy, block: torch.Tensor, logits: torch.Tensor, step: int):
    """dare's engine step for one block with steps_per_block = B (see `decode_blocks`)."""
    eligible = block == MASK
    k = torch.minimum(linear_step_count(eligible.sum(-1), step, B), eligible.sum(-1))
    tokens, conf = policy.propose(logits)
    transfer = policy.select(conf, eligible, k, step, B) & eligible
    return torch.where(transfer, tokens, block), transfer


@pytest.mark.parametrize(
    "remasking,threshold,sglang_threshold",
    [("low_confidence_dynamic", 0.3, 0.3), ("low_confidence_dynamic", 0.9, 0.9), ("low_confidence_static", None, 1.0)],
)
def test_sglang_rule_unmasks_what_dares_sdar_rule_unmasks(remasking, threshold, sglang_threshold):
    config = sdar_config(remasking=remasking, threshold=threshold)
    assert check_sampling(config, temperature_supported=False)["threshold"] == sglang_threshold
    policy = SDARPolicy(config, None)
    rows = 4
    ours = theirs = torch.full((rows, B), MASK)
    counts = []
    for step in range(B):
        if not bool((ours == MASK).any()):
            break
        logits = hand_built_logits(step, rows)
        ours, t_ours = dare_step(policy, ours, logits, step)
        theirs, t_theirs = sglang_low_confidence_step(theirs, logits, MASK, sglang_threshold)
        assert torch.equal(t_ours, t_theirs), f"step {step}: different positions unmasked"
        assert torch.equal(ours, theirs)
        counts.append(t_ours.sum(-1))
    assert not bool((ours == MASK).any())
    counts = torch.stack(counts)
    if remasking == "low_confidence_static":
        assert bool((counts[counts > 0] == 1).all())  # one token per step
    else:
        assert bool((counts > 1).any())  # the threshold let several through at once
    # row 0's ties: one position per step, left to right
    assert bool((counts[:, 0] <= 1).all())


def test_a_row_without_masks_is_left_alone():
    block = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [MASK] * B])
    new, transfer = sglang_low_confidence_step(block, hand_built_logits(0, 2), MASK, 0.5)
    assert torch.equal(new[0], block[0]) and not bool(transfer[0].any()) and bool(transfer[1].any())


def test_settings_sglang_cannot_honour_are_refused_by_name():
    ok = sdar_config(remasking="low_confidence_dynamic", threshold=0.9, block_length=4)
    assert check_sampling(ok, temperature_supported=False) == {"threshold": 0.9, "block_size": 4}
    refused = {
        "algorithm": SamplingConfig(algorithm="llada", gen_length=B, steps=B, block_length=B),
        "remasking": sdar_config(remasking="sequential"),
        "steps": sdar_config(steps=B // 2),
        "top_k/top_p": sdar_config(top_p=0.9),
        "logits_eos_inf": sdar_config(confidence_eos_eot_inf=True),
        "temperature": sdar_config(temperature=1.0),
    }
    for field, config in refused.items():
        with pytest.raises(ValueError, match=f"^{field}.*: the sglang rollout backend"):
            check_sampling(config, temperature_supported=False)
    # an SGLang that samples proposals honours a temperature
    assert check_sampling(sdar_config(temperature=1.0), temperature_supported=True)["threshold"] == 1.0


def test_served_families_and_the_export_layout(tmp_path):
    with pytest.raises(ValueError, match="serves model types .*not 'llada'"):
        served_architecture(sharp_tiny("llada"))
    sdar = sharp_tiny("sdar")
    assert served_architecture(sdar) == "SDARForCausalLM"
    out = export_for_sglang(sdar, tmp_path / "m", "SDARForCausalLM")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["SDARForCausalLM"]
    assert (out / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="runs on a CUDA device, got device='cpu'"):
        SGLangBackend(sdar, "cpu")


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed")
def test_without_sglang_the_error_says_how_to_install_it():
    with pytest.raises(ImportError, match="separate environment.*rollout_backend: dare"):
        import_sglang()


def recipe(family: str, algorithm: str = "d1", **stage) -> dict:
    sampling = {"algorithm": "sdar", "steps": 12, "block_length": 4} if family == "sdar" else {"algorithm": "llada"}
    return {
        "model": {"family": family, "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": 12},
        "eval": {"enabled": False, "sampling": sampling},
        "stages": [{"kind": "rl", "algorithm": algorithm, "steps": 1, "batch_size": 2, "num_generations": 2,
                    "sampling": sampling, **stage}],
    }  # fmt: skip


@pytest.mark.parametrize(
    "family,algorithm,stage,message",
    [
        ("sdar", "d1", {"rollout_backend": "vllm"}, "unknown rollout backend 'vllm'; known: dare, sglang"),
        ("llada", "d1", {"rollout_backend": "sglang"}, "sglang: serves model types .*not 'llada'"),
        ("sdar", "d1", {"rollout_backend": "sglang", "sampling": {"algorithm": "sdar", "steps": 6}},
         "sglang: steps: the sglang rollout backend unmasks at least one token per step"),
        ("sdar", "cj_grpo", {"rollout_backend": "sglang"}, "does not report the decoding trajectory"),
        ("sdar", "d1", {"dynamic_sampling": {"enabled": True, "max_rounds": 0}}, "must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_recipe_load_refuses_what_the_backend_cannot_serve(family, algorithm, stage, message):
    with pytest.raises(RecipeError, match=message) as e:
        build_recipe(recipe(family, algorithm, **stage))
    assert "stages[0].rollout_backend" in str(e.value) or "stages[0].dynamic_sampling.max_rounds" in str(e.value)


def test_an_sdar_recipe_with_sglang_loads():
    built = build_recipe(recipe("sdar", rollout_backend="sglang"))
    assert built.stages[0].args.rollout_backend == "sglang"


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("sglang") is None,
    reason="needs a CUDA GPU and SGLang (its own environment: pip install -e '.[sglang]')",
)
def test_gpu_sglang_greedy_tokens_match_dares_on_a_tiny_replica():
    model = sharp_tiny("sdar").cuda()
    sampling = {"algorithm": "sdar", "gen_length": 8, "steps": 8, "remasking": "low_confidence_dynamic",
                "threshold": 0.9, "temperature": 0.0}  # fmt: skip
    ours = DareSamplerBackend(model, "cuda").generate(PROMPTS, sampling, [0, 1, 2])
    backend = SGLangBackend(model, "cuda", mem_fraction_static=0.3)
    try:
        theirs = backend.generate(PROMPTS, sampling, [0, 1, 2])
    finally:
        backend.engine.shutdown()
    assert torch.equal(theirs.response_ids, ours.response_ids.cpu())
