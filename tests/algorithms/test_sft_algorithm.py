"""The SFT algorithm is the `dare.diffusion.sft` objective plus per-row noise seeds."""

import pytest
import torch

from dare.algorithms import ALGORITHMS
from dare.diffusion.sft import sft_loss
from dare.models import tiny

V = 64


def _batch():
    """Three left-padded rows [prompt | response | EOS padding] of length 14, seeds 3, 4, 5."""
    g = torch.Generator().manual_seed(0)
    P, R = 6, 8
    ids = torch.full((3, P + R), V - 2, dtype=torch.long)
    attn = torch.zeros(3, P + R, dtype=torch.long)
    for b, (p, r) in enumerate([(4, 5), (6, 8), (2, 3)]):
        ids[b, P - p : P + r] = torch.randint(0, V - 2, (p + r,), generator=g)
        attn[b, P - p :] = 1
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, P:] = True
    return {"input_ids": ids, "attention_mask": attn, "response_mask": answer, "noise_seed": torch.tensor([3, 4, 5])}


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_sft_loss_is_the_mean_of_each_rows_own_seeded_loss(family):
    model = tiny(family, V).eval()
    spec = model.diffusion_spec()
    batch = _batch()
    algo_cls = ALGORITHMS.get("sft")
    with torch.no_grad():
        loss, metrics = algo_cls(algo_cls.Args(), spec).compute_loss(model, batch)
        rows = [
            sft_loss(
                model, batch["input_ids"][b : b + 1], batch["response_mask"][b : b + 1],
                batch["attention_mask"][b : b + 1], spec, torch.Generator().manual_seed(int(seed)),
            )[0]
            for b, seed in enumerate(batch["noise_seed"])
        ]  # fmt: skip
    # every row has an answer, so the batch loss is the plain mean of the per-row losses
    assert float(loss) == pytest.approx(float(torch.stack(rows).mean()), rel=1e-5)
    assert metrics["actor/sft_loss"] == pytest.approx(float(loss))
    assert 0 < metrics["actor/mask_ratio"] <= 1
