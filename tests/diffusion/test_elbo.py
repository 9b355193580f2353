"""The stratified ELBO (`dare.diffusion.elbo`): its Monte-Carlo average converges to the exact
expectation over mask counts and masks (enumerated), per block under block attention; the
single-sample view agrees with `logp`; rows draw their noise from their own generators."""

import itertools
import math

import pytest
import torch

from dare.data.formatting import collate_sft
from dare.data.tasks import builtin_tokenizer
from dare.diffusion.elbo import ElboEstimator, elbo_samples, sequence_elbo
from dare.diffusion.estimators import NoisePlan, view_logp
from dare.models import tiny
from dare.models.tokenizer import model_token_ids

ROWS = [{"prompt": "sort 3918", "response": "1389"}, {"prompt": "sort 52", "response": "25"}]


def setup(family: str, gen_length: int):
    tok = builtin_tokenizer()
    model = tiny(family, seed=0, **model_token_ids(tok)).eval()
    b = collate_sft(ROWS, tok, gen_length=gen_length, truncate=True)
    return model, {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")}


def exact_elbo(model, batch, row: int, groups: list[list[int]]) -> float:
    """E_l E_M [(n/l) sum_{i in M} log p(y_i | view)] summed over the groups (blocks), by
    enumerating every non-empty subset M of each group: one view per subset, weight
    (1/n) (n/l) / C(n, l) on its masked positions."""
    one = {k: v[row : row + 1] for k, v in batch.items()}
    L = one["input_ids"].shape[1]
    masks, weights = [], []
    for group in groups:
        n = len(group)
        for count in range(1, n + 1):
            for subset in itertools.combinations(group, count):
                m = torch.zeros(L, dtype=torch.bool)
                m[list(subset)] = True
                masks.append(m)
                weights.append(m.float() / count / math.comb(n, count))  # (1/n)(n/l)/C(n,l), l = count
    plan = NoisePlan(
        prompt_mask=torch.zeros(1, L, dtype=torch.bool),
        view_masks=torch.stack(masks)[None],  # [1, S, L]
        weights=torch.stack(weights)[None],  # [1, S, L]
        t=torch.zeros(1),
    )
    with torch.no_grad():
        return float((plan.weights * view_logp(model, one, plan)).sum())


@pytest.mark.parametrize("family,gen_length,block", [("llada", 4, None), ("dream", 4, None), ("sdar", 8, 4)])
def test_monte_carlo_elbo_converges_to_the_exact_expectation(family, gen_length, block):
    model, batch = setup(family, gen_length)
    P = batch["input_ids"].shape[1] - gen_length
    positions = list(range(P, P + gen_length))
    groups = [positions] if block is None else [positions[i : i + block] for i in range(0, gen_length, block)]
    est = ElboEstimator.for_spec(model.diffusion_spec(), 256)
    assert est.args.block_size == block
    with torch.no_grad():
        samples = elbo_samples(model, batch, est.sample(batch, torch.Generator().manual_seed(0)))  # [B, 256]
    for row in range(2):
        exact = exact_elbo(model, batch, row, groups)
        mc = float(samples[row].mean())
        # stratified counts make the samples negatively correlated: std/sqrt(K) bounds the error
        bound = 4 * float(samples[row].std()) / 256**0.5
        assert abs(mc - exact) < bound, (family, row, mc, exact, bound)
        assert exact < 0


def test_one_token_response_gives_the_exact_log_likelihood():
    model, batch = setup("llada", 1)
    P = batch["input_ids"].shape[1] - 1
    with torch.no_grad():
        samples = elbo_samples(
            model,
            batch,
            ElboEstimator.for_spec(model.diffusion_spec(), 3).sample(batch, torch.Generator().manual_seed(0)),
        )
        masked = batch["input_ids"].clone()
        masked[:, P] = model.diffusion_spec().mask_token_id
        logits = model(masked, attention_mask=batch["attention_mask"]).logits[:, P]  # [B, V]
        direct = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, P : P + 1])  # [B, 1]
    torch.testing.assert_close(samples, direct.expand(-1, 3), rtol=0, atol=1e-5)


def test_samples_average_to_logp_and_counts_are_stratified():
    model, batch = setup("llada", 6)
    est = ElboEstimator.for_spec(model.diffusion_spec(), 6)
    plan = est.sample(batch, torch.Generator().manual_seed(3))
    with torch.no_grad():
        samples = elbo_samples(model, batch, plan)  # [B, K]
        total = est.logp(model, batch, plan).sum(-1)  # [B]
        again = sequence_elbo(model, batch, 6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(samples.mean(-1), total, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(again, total)
    # K = n samples: the mask counts are exactly 1..n, one each
    assert sorted(plan.view_masks[0].sum(-1).tolist()) == [1, 2, 3, 4, 5, 6]
    assert not plan.view_masks[~batch["response_mask"][:, None].expand_as(plan.view_masks)].any()


def test_row_noise_does_not_depend_on_the_batch_split():
    model, batch = setup("sdar", 8)
    est = ElboEstimator.for_spec(model.diffusion_spec(), 4)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12)]  # noqa: E731
    whole = est.sample_rows(batch, gens())
    g = gens()
    halves = [est.sample_rows({k: v[i : i + 1] for k, v in batch.items()}, [g[i]]) for i in range(2)]
    for a, b in zip(whole.as_tensors().values(), NoisePlan.cat(halves).as_tensors().values()):
        assert torch.equal(a, b)
