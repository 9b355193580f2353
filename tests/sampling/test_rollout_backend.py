"""`RolloutBackend` and dare's reference backend: a request's tokens depend only on its prompt and
seed (not on what it is batched with, its place in the batch, or how many workers share the batch),
rollouts carry the policy version, and the registry / seeds / release contract."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import sharp_tiny
from verl import DataProto

from dare.sampling.backend import (
    ROLLOUT_BACKENDS,
    DareSamplerBackend,
    RowGenerators,
    build_backend,
    per_row_noise,
    row_seed,
)
from dare.sampling.config import SamplingConfig
from dare.sampling.generate import generate
from dare.workers.generation import generate_batch

# different prompt lengths, so a batch re-pads every prompt differently from its batch of one
PROMPTS = [[5, 9, 11], [7, 3, 21, 40, 8, 2, 33], [17], [4, 4, 4, 4]]
SEEDS = [11, 22, 33, 44]
BASE = {"gen_length": 8, "steps": 8, "block_length": 4, "temperature": 1.0}
CASES = {
    "llada": ("llada", {"algorithm": "llada"}),
    # threshold decoding: rows finish their blocks after different numbers of steps
    "llada_threshold": ("llada", {"algorithm": "llada", "threshold": 0.5}),
    "dream": ("dream", {"algorithm": "dream", "remasking": "maskgit_plus"}),
    "sdar_dynamic": ("sdar", {"algorithm": "sdar", "remasking": "low_confidence_dynamic", "threshold": 0.5}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_requests_tokens_do_not_depend_on_its_batch(case):
    family, sampling = CASES[case]
    backend = DareSamplerBackend(sharp_tiny(family))
    config = {**BASE, **sampling}
    full = backend.generate(PROMPTS, config, SEEDS)
    for i, (p, s) in enumerate(zip(PROMPTS, SEEDS)):
        alone = backend.generate([p], config, [s])
        assert torch.equal(alone.response_ids[0], full.response_ids[i]), f"prompt {i} alone vs in a batch of 4"
        assert torch.equal(alone.decode_step[0], full.decode_step[i])
    order = [2, 0, 3, 1]
    shuffled = backend.generate([PROMPTS[i] for i in order], config, [SEEDS[i] for i in order])
    assert torch.equal(shuffled.response_ids, full.response_ids[order])
    # the seed is what matters: a new seed for one prompt changes its tokens, not the others'
    other = backend.generate(PROMPTS, config, [11, 22, 34, 44])
    assert torch.equal(other.response_ids[[0, 1, 3]], full.response_ids[[0, 1, 3]])
    assert not torch.equal(other.response_ids[2], full.response_ids[2])


def test_generations_of_one_prompt_differ_and_match_one_at_a_time():
    backend = DareSamplerBackend(sharp_tiny("llada"))
    config = {**BASE, "algorithm": "llada", "num_generations": 3}
    out = backend.generate(PROMPTS[:2], config, SEEDS[:2])
    assert out.response_ids.shape == (6, 8) and out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert len({tuple(r.tolist()) for r in out.response_ids[:3]}) > 1  # distinct streams per generation
    alone = backend.generate(PROMPTS[1:2], config, SEEDS[1:2])
    assert torch.equal(alone.response_ids, out.response_ids[3:])


def test_one_prompt_at_a_time_path_is_each_prompt_alone_reassembled():
    """The path for samplers whose noise is not drawn through `ops.uniform` (rgas): each prompt alone
    with a generator from its seed, the rollouts re-padded into one."""
    model = sharp_tiny("llada")
    config = SamplingConfig(**BASE, algorithm="llada")
    assert per_row_noise(config) and not per_row_noise(SamplingConfig(algorithm="rgas", gen_length=8, steps=8))
    one = DareSamplerBackend(model)._one_by_one(model, PROMPTS, config, SEEDS)
    parts = [
        generate(model, [p], config, torch.Generator().manual_seed(row_seed(s, 0))) for p, s in zip(PROMPTS, SEEDS)
    ]
    assert torch.equal(one.response_ids, torch.cat([p.response_ids for p in parts]))
    batched = generate(model, PROMPTS, config)
    assert torch.equal(one.prompt_ids, batched.prompt_ids) and torch.equal(one.prompt_mask, batched.prompt_mask)
    assert torch.equal(one.prompt_index, torch.arange(4)) and one.nfe == sum(p.nfe for p in parts)


def test_rollouts_carry_the_policy_version_and_new_weights_change_them():
    backend = DareSamplerBackend(sharp_tiny("llada", seed=1))
    config = {**BASE, "algorithm": "llada", "temperature": 0.0}
    before = backend.generate(PROMPTS, config, SEEDS)
    assert before.policy_version == 0
    backend.update_weights(sharp_tiny("llada", seed=2).state_dict().items(), version=7)
    after = backend.generate(PROMPTS, config, SEEDS)
    assert after.policy_version == 7 and not torch.equal(after.response_ids, before.response_ids)
    backend.release()
    with pytest.raises(RuntimeError, match="between release\\(\\) and resume\\(\\)"):
        backend.generate(PROMPTS, config, SEEDS)
    backend.resume()
    assert torch.equal(backend.generate(PROMPTS, config, SEEDS).response_ids, after.response_ids)


def test_a_borrowed_model_is_read_at_each_call():
    """The colocated actor lends its current module (a callable); syncing only moves the version."""
    models = [sharp_tiny("llada", seed=1)]
    backend = build_backend("dare", lambda: models[0], "cpu")
    config = {**BASE, "algorithm": "llada", "temperature": 0.0}
    a = backend.generate(PROMPTS, config, SEEDS)
    models[0] = sharp_tiny("llada", seed=2)
    backend.sync_from(models[0], 3)
    b = backend.generate(PROMPTS, config, SEEDS)
    assert b.policy_version == 3 and not torch.equal(a.response_ids, b.response_ids)


def test_worker_chunks_with_row_seeds_equal_the_whole_batch():
    """What `dp_call` does with 2 workers: each rank samples its chunk with the rows' own seeds."""
    backend = DareSamplerBackend(sharp_tiny("llada"))
    ids = torch.tensor([[0, 0, 5, 9], [7, 3, 21, 40], [0, 0, 0, 17], [4, 4, 4, 4]])
    data = DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": (ids != 0).long(), "rollout_seed": torch.tensor(SEEDS)},
        meta_info={"sampling": {**BASE, "algorithm": "llada"}, "seed": 5},
    )
    whole = generate_batch(backend, data, rank=0)
    halves = [generate_batch(backend, chunk, rank) for rank, chunk in enumerate(data.chunk(2))]
    assert torch.equal(torch.cat([h.batch["responses"] for h in halves]), whole.batch["responses"])
    assert whole.batch["policy_version"].tolist() == [0] * 4


def test_bad_requests_and_unknown_backends_are_named():
    backend = DareSamplerBackend(sharp_tiny("llada"))
    with pytest.raises(ValueError, match="seeds: got 3 for 4 prompts"):
        backend.generate(PROMPTS, {**BASE, "algorithm": "llada"}, SEEDS[:3])
    assert ROLLOUT_BACKENDS.names() == ["dare", "sglang"]
    with pytest.raises(KeyError, match="unknown rollout backend 'vlm'; known: dare, sglang"):
        build_backend("vlm", backend.model, "cpu")
    with pytest.raises(ValueError, match="first dim must be the 2 rows"):
        RowGenerators([1, 2], "cpu").row_uniform((3, 4), torch.device("cpu"))
    assert len({row_seed(0, g) for g in range(100)} | {row_seed(1, g) for g in range(100)}) == 200


def test_the_worker_classes_that_wrap_backends_can_be_shipped_to_ray():
    """Ray exports an actor class by value; an attribute named like a torch submodule
    (`self.backends`) makes cloudpickle try to pickle `torch.backends` and fail."""
    from ray import cloudpickle

    from dare.workers.actor import ActorWorker
    from dare.workers.rollout import RolloutWorker

    for cls in (ActorWorker, RolloutWorker):
        assert cloudpickle.dumps(cls.__ray_metadata__.modified_class)
