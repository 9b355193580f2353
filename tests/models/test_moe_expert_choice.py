"""Expert-choice routing (EC-DLM), the MoE families' training-time option `moe_routing:
expert_choice`: each expert takes its C = ceil(N k / E) best tokens; dispatch, balance and a
short SFT on both tiny families."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

from dare.models import tiny
from dare.models.moe import ExpertChoiceRouter, SwiGLUExperts, load_balancing_loss, router_stats


def test_each_expert_takes_its_top_capacity_tokens_ties_to_the_lower_index():
    torch.manual_seed(0)
    router = ExpertChoiceRouter(16, 4, 2, fp32=True)
    x = torch.randn(10, 16)
    r = router(x)
    probs = torch.softmax(x @ router.weight.t(), -1).detach()
    assert r.expert_tokens.shape == (4, 5)  # C = ceil(10 * 2 / 4)
    for e in range(4):
        want = sorted(range(10), key=lambda n: (-float(probs[n, e]), n))[:5]
        assert r.expert_tokens[e].tolist() == want
        torch.testing.assert_close(r.expert_weight[e], probs[want, e])
    # ties: identical tokens go to the lower index first
    same = router(torch.zeros(6, 16))
    assert all(same.expert_tokens[e].tolist() == [0, 1, 2] for e in range(4))
    stats = router_stats([r])
    assert torch.equal(stats["max_load"], torch.ones(1))  # balanced by construction
    assert float(load_balancing_loss([r])) == pytest.approx(float(4 * (0.5 * probs.mean(0)).sum()), rel=1e-6)


def test_dispatch_equals_the_sum_over_the_experts_that_chose_a_token():
    torch.manual_seed(1)
    router, experts = ExpertChoiceRouter(16, 4, 1, fp32=True), SwiGLUExperts(4, 16, 8)
    x = torch.randn(7, 16)
    r = router(x)
    want = torch.zeros(7, 16)
    for e in range(4):
        for c, n in enumerate(r.expert_tokens[e].tolist()):
            want[n] += r.expert_weight[e, c] * experts[e](x[n : n + 1])[0]
    torch.testing.assert_close(experts(x, r), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_tiny_family_with_expert_choice_routes_and_trains(family):
    model = tiny(family, seed=0, moe_routing="expert_choice")
    ids = torch.randint(0, 60, (4, 8))
    out = model(ids)
    assert out.logits.shape == (4, 8, model.config.vocab_size)
    assert torch.equal(out.router_stats["max_load"], torch.ones_like(out.router_stats["max_load"]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(ids).logits.flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    gates = [p.grad for n, p in model.named_parameters() if n.endswith("gate.weight")]
    assert gates and all(g is not None and g.abs().sum() > 0 for g in gates)  # the router learns


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_unknown_routing_is_refused_naming_the_field(family):
    with pytest.raises(
        (ValueError, StrictDataclassClassValidationError),
        match=r"moe_routing must be one of \('token_choice', 'expert_choice'\), got 'topk'",
    ):
        tiny(family, seed=0, moe_routing="topk")
