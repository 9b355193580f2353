"""`plan_batches`: the noise plans of the inner updates of one rollout (grpo, bgpo, spg, wd1 share
it): plan k comes from the rows' k-th seeds, so it does not depend on how the batch is split,
and the inner updates see different noise."""

import torch
from test_grpo_algorithm import rl_batch  # pytest puts this folder on sys.path

from dare.algorithms.grpo import PLAN_PREFIX, plan_batches
from dare.diffusion.estimators import NoisePlan, build_estimator


def test_plan_k_is_drawn_from_the_kth_seeds_row_by_row():
    batch = rl_batch("llada")  # noise_seed [4, 2]
    est = build_estimator("coupled")
    its = plan_batches(est, batch, 2)
    assert len(its) == 2
    for k, it in enumerate(its):
        assert all(torch.equal(it[key], batch[key]) for key in batch)  # the batch travels unchanged
        plan = NoisePlan.from_tensors(it, PLAN_PREFIX)
        for b in range(4):  # each row alone, with its own seed: the same plan row
            row = {key: v[b : b + 1] for key, v in batch.items()}
            (alone,) = plan_batches(est, {**row, "noise_seed": row["noise_seed"][:, k : k + 1]}, 1)
            own = NoisePlan.from_tensors(alone, PLAN_PREFIX)
            assert torch.equal(own.view_masks[0], plan.view_masks[b]) and torch.equal(own.t[0], plan.t[b])
    p0, p1 = (NoisePlan.from_tensors(it, PLAN_PREFIX) for it in its)
    assert not torch.equal(p0.t, p1.t)  # fresh noise per inner update
