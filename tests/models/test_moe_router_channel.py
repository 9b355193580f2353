"""The MoE router terms reach a training objective through one channel (dare/models/moe.py
`with_router_losses`, what the actor wraps every `compute_loss` in): the gradient equals the
objective's plus `coef * aux` computed by hand, a zero coefficient changes nothing, dense families
are untouched, and the router metrics come out."""

from __future__ import annotations

import pytest
import torch

from dare.algorithms import ALGORITHMS
from dare.data.formatting import collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.errors import RecipeError
from dare.models import tiny
from dare.models.moe import (
    SparseMoeBlock,
    backward_with_router_losses,
    collect_router_losses,
    router_loss_coefs,
    with_router_losses,
)
from dare.models.tokenizer import model_token_ids


def setup(family: str):
    tok = builtin_tokenizer()
    model = tiny(family, seed=0, **model_token_ids(tok)).train()
    rows = get_task("addition").generate("train", 4, seed=0)
    b = collate_sft(rows, tok, gen_length=8, truncate=True)
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")}
    batch["noise_seed"] = torch.arange(4)
    algo_cls = ALGORITHMS.get("sft")
    return model, algo_cls(algo_cls.Args(), model.diffusion_spec()), batch


def grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def gate_names(model) -> list[str]:
    return [f"{n}.gate.weight" for n, m in model.named_modules() if isinstance(m, SparseMoeBlock)]


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_router_gradient_equals_objective_plus_coef_aux_by_hand(family):
    model, algo, batch = setup(family)
    coef, z_coef = 0.5, 0.01
    loss, metrics = with_router_losses(lambda: algo.compute_loss(model, batch), coef, z_coef)
    got = grads(model, loss)
    # by hand: the same objective, its forward's aux / z losses read from the model output by a hook
    outs = []
    handle = model.register_forward_hook(lambda m, a, out: outs.append(out))
    objective, _ = algo.compute_loss(model, batch)
    handle.remove()
    assert len(outs) == 1
    want = grads(model, objective + coef * outs[0].aux_loss + z_coef * outs[0].z_loss)
    names = gate_names(model)
    assert names and set(got) == set(want)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)
    # the router term actually moves the gates: without it the gate gradient differs
    plain = grads(model, objective_only(model, algo, batch))
    assert any(not torch.allclose(plain[n], got[n]) for n in names)
    assert metrics["router/aux_loss"] == pytest.approx(float(outs[0].aux_loss.detach()))
    assert metrics["router/z_loss"] == pytest.approx(float(outs[0].z_loss.detach()))
    load = outs[0].router_stats["expert_load"]
    assert metrics["router/max_load"] == pytest.approx(float(outs[0].router_stats["max_load"].mean()), rel=1e-5)
    assert metrics["router/max_load"] >= 1.0
    cv = (load.std(-1, unbiased=False) / load.mean(-1)).mean()
    assert metrics["router/load_cv"] == pytest.approx(float(cv), rel=1e-5)


def objective_only(model, algo, batch) -> torch.Tensor:
    return algo.compute_loss(model, batch)[0]


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_zero_coefficients_equal_no_channel(family):
    model, algo, batch = setup(family)
    loss, metrics = with_router_losses(lambda: algo.compute_loss(model, batch), 0.0, 0.0)
    got = grads(model, loss)
    plain_loss = objective_only(model, algo, batch)
    want = grads(model, plain_loss)
    assert torch.equal(loss.detach(), plain_loss.detach())
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert "router/aux_loss" in metrics  # the metrics are reported whatever the weight


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_dense_families_are_bit_identical(family):
    model, algo, batch = setup(family)
    loss, metrics = with_router_losses(lambda: algo.compute_loss(model, batch), 1.0, 1.0)
    got = grads(model, loss)
    plain_loss, plain_metrics = algo.compute_loss(model, batch)
    want = grads(model, plain_loss)
    assert torch.equal(loss.detach(), plain_loss.detach()) and set(got) == set(want)
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert not any(k.startswith("router/") for k in metrics) and metrics.keys() == plain_metrics.keys()


def test_forwards_without_gradients_are_not_training_terms():
    model, _, batch = setup("sdar_moe")
    with collect_router_losses() as router:
        with torch.no_grad():  # e.g. the reference policy's forward inside an objective
            model(batch["input_ids"])
    assert router.aux == []
    with collect_router_losses() as router:
        model(batch["input_ids"])
        model(batch["input_ids"])
    assert len(router.aux) == 2  # every forward of the objective (ELBO samples, chosen / rejected)


def test_coefficients_default_from_the_family_config():
    sdar, llada2 = tiny("sdar_moe", seed=0).config, tiny("llada2_moe", seed=0).config
    assert router_loss_coefs({}, sdar) == (sdar.router_aux_loss_coef, 0.0)
    assert router_loss_coefs({"router_aux_loss_coef": None}, llada2) == (0.0, 0.0)  # LLaDA2 ships none
    assert router_loss_coefs({"router_aux_loss_coef": 0.0, "router_z_loss_coef": 1e-3}, sdar) == (0.0, 1e-3)


@pytest.mark.parametrize("key", ["router_aux_loss_coef", "router_z_loss_coef"])
def test_negative_coefficient_is_refused_naming_the_key(key):
    from dare.config.schema import StageSpec

    stage = StageSpec(kind="sft", algorithm="sft", steps=1, **{key: -0.1})
    with pytest.raises(RecipeError, match=rf"stages\[0\]\.{key}.*>= 0"):
        stage.validate("stages[0]", "r.yaml")


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_loss_handed_over_whole_is_exactly_the_wrapped_compute_loss(family):
    """The actor's channel (`backward_with_router_losses` around `loss_backward`) with an objective
    that hands over its loss whole: the loss, metrics and gradient of `with_router_losses`, bit for bit."""
    model, algo, batch = setup(family)
    loss, metrics = with_router_losses(lambda: algo.compute_loss(model, batch), 0.5, 0.01)
    want = grads(model, loss)
    model.zero_grad(set_to_none=True)
    got_loss, got_metrics = backward_with_router_losses(
        lambda part_backward: algo.loss_backward(model, batch, part_backward), lambda part: part.backward(), 0.5, 0.01
    )
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.equal(got_loss, loss.detach()) and got_metrics == metrics
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)


def test_per_sample_parts_carry_their_share_of_the_router_terms():
    """BGPO hands over one part per Monte-Carlo sample (share 1/J): each part gets the router
    terms of its own forward times 1/J, so the gradient is that of mean_j (l_j + coef * aux_j)."""
    model, _, batch = setup("sdar_moe")
    algo_cls = ALGORITHMS.get("bgpo")
    algo = algo_cls(algo_cls.Args(mc_num=2), model.diffusion_spec())
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * batch["response_mask"]
    batch["noise_seed"] = batch["noise_seed"][:, None]  # [B, mu]
    (batch,) = algo.prepare(model, None, batch)
    coef = 0.5
    outs = []
    handle = model.register_forward_hook(lambda m, a, out: outs.append(out))
    model.zero_grad(set_to_none=True)
    loss, metrics = backward_with_router_losses(
        lambda part_backward: algo.loss_backward(model, batch, part_backward), lambda part: part.backward(), coef, 0.0
    )
    handle.remove()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(outs) == 2  # one forward per sample
    # by hand, one graph per sample: (l_j + coef * aux_j) / 2
    model.zero_grad(set_to_none=True)
    hand = 0.0
    for j in range(2):
        outs.clear()
        handle = model.register_forward_hook(lambda m, a, out: outs.append(out))
        elbo_j = algo._sample(model, batch, j)
        handle.remove()
        lj, _ = algo._sample_loss(elbo_j, elbo_j.detach(), batch)
        term = (lj + coef * outs[0].aux_loss) / 2
        term.backward()
        hand += float(term.detach())
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    for n in gate_names(model):
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)
    assert 0 < metrics["router/aux_loss"] and metrics["router/max_load"] >= 1.0  # averaged over the samples
