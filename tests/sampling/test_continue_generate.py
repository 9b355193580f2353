"""Continuing a partial response for a range of the schedule's steps (`continue_generate`, the
`RolloutBackend.continue_generate` of dare's sampler, the worker's `continue_batch`): the tree
rollouts of d-TreeRPO are built on it.

Defining property: decoding a schedule in pieces, each piece continuing the previous one's
response with the same seed, gives the full decode's tokens exactly when every piece starts on a
block boundary (per-row generators restart per block in both). Refusals for what cannot resume."""

import pytest
import torch
from verl import DataProto

from dare.models import tiny
from dare.sampling import SamplingConfig, generate
from dare.sampling.backend import DareSamplerBackend, RowGenerators
from dare.sampling.generate import continue_generate
from dare.workers.generation import generate_batch

V = 48
PROMPTS = [[5, 6, 7], [8, 9], [11, 12, 13, 14]]
SEEDS = [3, 11, 29]


def cut(resp: torch.Tensor, eos: int) -> torch.Tensor:
    """What `generate`'s Rollout shows: every token after the first end id replaced by it (a
    continued state keeps them; nothing reads them)."""
    is_end = resp == eos
    return resp.masked_fill((is_end.long().cumsum(-1) - is_end.long()) > 0, eos)


def cfg(family: str, **kw) -> SamplingConfig:
    return SamplingConfig(**{"algorithm": family, "gen_length": 8, "steps": 8, "temperature": 1.0, **kw})


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("pieces,block_length", [([1] * 8, 1), ([4, 4], 4), ([2, 2, 4], 2), ([8], 8)])
def test_pieces_on_block_boundaries_reproduce_the_full_decode(family, pieces, block_length):
    model = tiny(family, V, seed=0).eval()
    config = cfg(family, block_length=block_length)
    full = generate(model, PROMPTS, config, generator=RowGenerators(SEEDS, "cpu"))
    prompts = (full.prompt_ids, full.prompt_mask)
    resp = torch.full_like(full.response_ids, model.diffusion_spec().mask_token_id)
    first = 0
    for n in pieces:
        resp = continue_generate(model, prompts, resp, config, RowGenerators(SEEDS, "cpu"), first, n)
        first += n
    assert torch.equal(cut(resp, model.diffusion_spec().eos_token_id), full.response_ids)
    assert len(set(map(tuple, full.response_ids.tolist()))) == 3  # the rows are not all alike


def test_a_piece_keeps_the_parents_tokens_and_unmasks_its_steps_share():
    model = tiny("llada", V, seed=0).eval()
    config = cfg("llada", block_length=4, logits_eos_inf=True)  # no EOS: every step unmasks one token
    mask_id = model.diffusion_spec().mask_token_id
    full = generate(model, PROMPTS, config, generator=RowGenerators(SEEDS, "cpu"))
    prompts = (full.prompt_ids, full.prompt_mask)
    start = torch.full_like(full.response_ids, mask_id)
    parent = continue_generate(model, prompts, start, config, RowGenerators(SEEDS, "cpu"), 0, 3)
    assert ((parent != mask_id).sum(-1) == 3).all()
    child = continue_generate(model, prompts, parent, config, RowGenerators([1, 2, 4], "cpu"), 3, 3)
    kept = parent != mask_id
    assert torch.equal(child[kept], parent[kept])
    assert ((child != mask_id).sum(-1) == 6).all()
    # the same piece from the same parent with the same seeds: the same tokens
    again = continue_generate(model, prompts, parent, config, RowGenerators([1, 2, 4], "cpu"), 3, 3)
    assert torch.equal(again, child)


def test_the_backend_and_the_worker_continue_with_per_row_seeds():
    model = tiny("llada", V, seed=0).eval()
    config = cfg("llada", block_length=4)
    backend = DareSamplerBackend(model, "cpu")
    full = backend.generate(PROMPTS, {**config.__dict__, "num_generations": 1}, SEEDS)
    mask_id = model.diffusion_spec().mask_token_id
    start = torch.full_like(full.response_ids, mask_id)
    ids, mask = full.prompt_ids, full.prompt_mask
    # the backend seeds row i from seeds[i] itself; generate() seeds it from row_seed(seed, 0)
    from dare.sampling.backend import row_seed

    seeds = [row_seed(s, 0) for s in SEEDS]
    half = backend.continue_generate((ids, mask), start, config, seeds, 0, 4)
    data = DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": mask, "partial_response": half,
                 "rollout_seed": torch.tensor(seeds)},
        meta_info={"sampling": {**config.__dict__, "num_generations": 1}, "step_range": (4, 8)},
    )  # fmt: skip
    out = generate_batch(backend, data, rank=0)
    assert torch.equal(cut(out.batch["responses"], model.diffusion_spec().eos_token_id), full.response_ids)
    # a row's tokens do not depend on its batch: row 1 alone
    alone = backend.continue_generate((ids[1:2], mask[1:2]), start[1:2], config, seeds[1:2], 0, 4)
    assert torch.equal(alone, half[1:2])


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"cache": "prefix"}, "cache='prefix': resuming a partial state needs cache='none'"),
        ({"threshold": 0.9}, "resuming needs a fixed number of steps per block"),
        ({"algorithm": "first_hitting"}, "has its own decoding loop"),
    ],
)
def test_what_cannot_resume_is_refused(kw, message):
    model = tiny("llada", V, seed=0).eval()
    config = cfg("llada", block_length=4, **kw)
    ids, mask = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        continue_generate(model, (ids, mask), torch.full((1, 8), 47), config, None, 0, 2)


def test_steps_outside_the_schedule_are_refused():
    model = tiny("llada", V, seed=0).eval()
    ids, mask = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"steps \[6, 10\) are outside the schedule's 8 steps"):
        continue_generate(model, (ids, mask), torch.full((1, 8), 47), cfg("llada"), None, 6, 4)
