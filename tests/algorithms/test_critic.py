"""The optional critic role: no shipped algorithm declares one (nothing changes for them); a value
model (the policy's architecture + a scalar head) fits a fixed target with its own optimizer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dare.algorithms import ALGORITHMS
from dare.algorithms.base import CriticSpec
from dare.models import tiny
from dare.workers.critic import Critic, ValueModel

V = 48


def value_mse(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked MSE of V to each row's score over its response tokens (a critic_loss)."""
    mask = batch["response_mask"].float()
    err = (values - batch["scores"][:, None]) ** 2 * mask  # [B, L]
    return err.sum() / mask.sum(), {}


def test_shipped_algorithms_declare_no_critic():
    for name, algo in ALGORITHMS.items():
        fields = {f.name for f in dataclasses.fields(algo.Args)}
        args = algo.Args(**({"steps": 1} if "steps" in fields else {}))
        assert algo.critic_spec(args) is None, name


def test_critic_spec_is_checked():
    with pytest.raises(ValueError, match="lr > 0"):
        CriticSpec(lr=0.0)


def test_value_model_fits_a_fixed_target():
    torch.manual_seed(0)
    model = tiny("llada", V)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, V - 3, (4, 10), generator=g),
        "attention_mask": torch.ones(4, 10, dtype=torch.long),
        "response_mask": torch.arange(10).expand(4, 10) >= 5,
        "scores": torch.tensor([1.0, -1.0, 0.5, 2.0]),
    }
    critic = Critic(ValueModel(model), CriticSpec(lr=1e-2))
    assert bool((critic.values(batch) == 0).all())  # the head starts at 0
    policy_head = model.get_output_embeddings().weight.detach().clone()
    first = critic.update(batch, value_mse)
    assert first["critic/loss"] == pytest.approx((1 + 1 + 0.25 + 4) / 4)  # mean target^2
    for _ in range(40):
        last = critic.update(batch, value_mse)
    # measured: 1.5625 -> 0.028 after 40 updates (llada tiny, seed 0, float32 CPU)
    loss, _ = value_mse(critic.values(batch), batch)
    assert last["critic/loss"] < 0.1 and loss.item() < 0.1
    assert torch.equal(model.get_output_embeddings().weight, policy_head)  # the LM head is unused


def test_saved_critic_continues_bit_exactly(tmp_path):
    """A critic saved after 3 updates and loaded into a fresh one (what a resumed stage does) takes
    the next updates exactly as the original does: same losses, values, weights and AdamW moments."""
    g = torch.Generator().manual_seed(1)
    batches = [
        {"input_ids": torch.randint(5, V - 3, (3, 9), generator=g), "attention_mask": torch.ones(3, 9, dtype=torch.long),
         "response_mask": torch.arange(9).expand(3, 9) >= 4, "scores": torch.randn(3, generator=g)}
        for _ in range(5)
    ]  # fmt: skip
    original = Critic(ValueModel(tiny("llada", V, seed=0)), CriticSpec(lr=1e-2))
    for b in batches[:3]:
        original.update(b, value_mse)
    original.save(tmp_path)
    resumed = Critic(ValueModel(tiny("llada", V, seed=0)), CriticSpec(lr=1e-2))
    resumed.load(tmp_path, updates=3)
    assert resumed.updates == 3
    after = [resumed.update(b, value_mse) for b in batches[3:]]
    assert [original.update(b, value_mse) for b in batches[3:]] == after
    assert all(torch.equal(original.values(b), resumed.values(b)) for b in batches)
    for (name, p), q in zip(original.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
        for k, v in original.optimizer.state[p].items():
            assert torch.equal(v, resumed.optimizer.state[q][k]), (name, k)
    fresh = Critic(ValueModel(tiny("llada", V, seed=0)), CriticSpec(lr=1e-2))
    assert fresh.update(batches[3], value_mse)["critic/loss"] != after[0]["critic/loss"]  # the state matters
