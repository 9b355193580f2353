"""The relaxed (Gumbel-softmax) reverse process of DRAKES: its gradient against a score-function
estimate, the tau -> 0 limit, truncation (gradients and memory), the exact per-step KL, and the
three families (LLaDA, Dream's shifted logits, SDAR's blocks)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dare.models import tiny
from dare.sampling.relaxed import RelaxedConfig, relaxed_sample

V, L = 12, 3
SMALL = dict(d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=64)
PROMPT = torch.tensor([[4, 5, 6]])


def small_model(family: str = "llada", seed: int = 0):
    overrides = dict(SMALL)
    if family != "llada":  # Dream / SDAR configs name the sizes differently
        overrides = dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1,
                         intermediate_size=64, **({"head_dim": 16} if family == "sdar" else {}))  # fmt: skip
    return tiny(family, vocab_size=V, seed=seed, **overrides)


def linear_weights(mask_id: int) -> torch.Tensor:
    w = torch.randn(L, V, generator=torch.Generator().manual_seed(1))
    w[:, mask_id] = 0
    return w  # [L, V]


def flat_grad(model: nn.Module) -> torch.Tensor:
    g = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g


def relaxed_gradients(model, w, steps, tau, n, groups, seed) -> torch.Tensor:
    """Per-group gradients `[K, P]` (n rows each) of mean_b r(x_0^b), r linear, through the relaxed sampler."""
    spec, out = model.diffusion_spec(), []
    ids = PROMPT.expand(n, -1)
    for k in range(groups):
        cfg = RelaxedConfig(steps=steps, gen_length=L, tau=tau, truncate_steps=steps)
        s = relaxed_sample(model, ids, torch.ones_like(ids), spec, cfg, torch.Generator().manual_seed(seed * 100 + k))
        (s.probs * w).sum((-1, -2)).mean().backward()
        out.append(flat_grad(model))
    return torch.stack(out)


def score_function_gradients(model, w, steps, n, groups, seed) -> torch.Tensor:
    """Per-group REINFORCE gradients `[K, P]`: mean_b (r_b - baseline_b) grad log P_theta(trajectory_b),
    leave-one-out baseline, hard ancestral trajectories (truncate_steps = 0)."""
    spec, out = model.diffusion_spec(), []
    mask_id, ids = spec.mask_token_id, PROMPT.expand(n, -1)
    for k in range(groups):
        cfg = RelaxedConfig(steps=steps, gen_length=L, truncate_steps=0)
        with torch.no_grad():
            s = relaxed_sample(
                model, ids, torch.ones_like(ids), spec, cfg, torch.Generator().manual_seed(seed * 100 + k),
                record_states=True,
            )  # fmt: skip
        r = (F.one_hot(s.tokens, V).float() * w).sum((-1, -2))  # [n]
        log_p = torch.zeros(n)
        for x_t, x_s in zip(s.states[:-1], s.states[1:]):
            logits = model(input_ids=torch.cat([ids, x_t], 1)).logits[:, ids.shape[1] :].float()
            logits[..., mask_id] = -math.inf
            lp = logits.log_softmax(-1).gather(-1, x_s.unsqueeze(-1)).squeeze(-1)  # [n, L]
            revealed = (x_t == mask_id) & (x_s != mask_id)  # log(r) and log(1 - r) do not depend on theta
            log_p = log_p + torch.where(revealed, lp, torch.zeros_like(lp)).sum(-1)
        baseline = (r.sum() - r) / (n - 1)
        ((r - baseline) * log_p).mean().backward()
        out.append(flat_grad(model))
    return torch.stack(out)


def test_relaxed_gradient_agrees_with_score_function_estimate_as_tau_decreases():
    # A 2-step trajectory (so relaxed, soft intermediate states feed the second forward) of 3
    # positions, linear reward. 8192 samples in 16 groups per estimator: standard errors from the
    # spread of the group means. Measured (seed below): REINFORCE projection 4.12 +- 0.07; relaxed
    # 2.40 (tau 1), 3.54 (tau 0.3), 3.96 +- 0.13 (tau 0.1). The Gumbel-softmax gradient is biased for
    # tau > 0 and the bias vanishes as tau -> 0 while its variance grows, so we assert: agreement
    # within 4 combined standard errors at tau = 0.1 (a false alarm has probability < 1e-4 if the
    # remaining bias were zero; the measured gap is 1.1 s.e.), a clearly biased tau = 1, and a
    # monotone approach.
    torch.manual_seed(0)
    model = small_model()
    w = linear_weights(model.diffusion_spec().mask_token_id)
    n, K = 512, 16  # rows per group, groups
    sf = score_function_gradients(model, w, 2, n, K, seed=1)
    direction = score_function_gradients(model, w, 2, n, K, seed=3).mean(0)  # independent direction
    direction = direction / direction.norm()
    sf_proj = sf @ direction  # [K]
    sf_mean, sf_se = float(sf_proj.mean()), float(sf_proj.std() / K**0.5)
    gaps = {}
    for tau in (1.0, 0.3, 0.1):
        g = relaxed_gradients(model, w, 2, tau, n, K, seed=2)
        proj = g @ direction
        mean, se = float(proj.mean()), float(proj.std() / K**0.5)
        gaps[tau] = (mean - sf_mean, math.hypot(se, sf_se))
        cos = F.cosine_similarity(g.mean(0), sf.mean(0), dim=0)
        assert cos > 0.95, (tau, float(cos))
    gap, se = gaps[0.1]
    assert abs(gap) < 4 * se, gaps
    assert abs(gaps[1.0][0]) > 0.25 * abs(sf_mean) and abs(gaps[1.0][0]) > 4 * gaps[1.0][1], gaps
    assert abs(gaps[1.0][0]) > abs(gaps[0.3][0]) > abs(gaps[0.1][0]) - 2 * se, gaps


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_relaxed_sample_tends_to_the_hard_sample_as_tau_goes_to_zero(family):
    # same noise: the hard sampler (truncate 0, the exact ancestral sampler fed token ids) and the
    # fully relaxed one (fed soft states through inputs_embeds, Dream's logits re-aligned, SDAR's
    # response-aligned blocks) give the same tokens at small tau, and the relaxed state approaches
    # their one-hot monotonically
    model = small_model(family)
    spec = model.diffusion_spec()
    ids = torch.randint(3, V - 2, (6, 3), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = spec.pad_token_id, 0  # a left-padded row
    gen = 8 if family == "sdar" else 6  # SDAR: two blocks of its block_size 4

    def run(tau: float, truncate: int):
        cfg = RelaxedConfig(steps=gen, gen_length=gen, tau=tau, truncate_steps=truncate)
        gens = [torch.Generator().manual_seed(10 + b) for b in range(6)]
        with torch.no_grad():
            return relaxed_sample(model, ids, mask, spec, cfg, gens)

    hard = run(1.0, 0)
    assert (hard.tokens != spec.mask_token_id).all()
    onehot = F.one_hot(hard.tokens, V).float()
    errors = []
    for tau in (1.0, 0.3, 0.1, 0.01, 1e-4):  # the last gap to a near-tie in these seeds is ~2e-3
        s = run(tau, gen)
        errors.append((float((s.soft - onehot).abs().mean()), float((s.soft - onehot).abs().max())))
    means = [e[0] for e in errors]
    assert means == sorted(means, reverse=True), errors
    assert errors[-1][1] < 1e-3, errors
    assert torch.equal(run(1e-4, gen).tokens, hard.tokens)
    # straight-through: the value is exactly the hard one-hot
    assert torch.equal(run(0.5, 3).probs, F.one_hot(run(0.5, 3).tokens, V).float())


class ForwardRecorder(nn.Module):
    """Records, per forward call, whether autograd was recording."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config, self.grad_enabled = model, model.config, []

    def forward(self, **kwargs):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(**kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()


def saved_tensor_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while `fn()` runs."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_only_the_last_truncate_steps_keep_gradients_and_memory():
    model = small_model()
    spec = model.diffusion_spec()
    ids = PROMPT.expand(4, -1)
    w = linear_weights(spec.mask_token_id)
    for steps, truncate in [(6, 2), (6, 6), (3, 1)]:
        rec = ForwardRecorder(model)
        cfg = RelaxedConfig(steps=steps, gen_length=L, tau=0.5, truncate_steps=truncate)
        s = relaxed_sample(rec, ids, torch.ones_like(ids), spec, cfg, torch.Generator().manual_seed(0))
        # earlier steps ran under no_grad: no parameter can get a gradient contribution from them
        assert rec.grad_enabled == [False] * (steps - truncate) + [True] * truncate
        (s.probs * w).sum().backward()
        g = flat_grad(model)
        assert torch.isfinite(g).all() and g.abs().sum() > 0

    def saved(steps: int, truncate: int) -> int:
        cfg = RelaxedConfig(steps=steps, gen_length=6, tau=0.5, truncate_steps=truncate)
        return saved_tensor_bytes(
            lambda: relaxed_sample(model, ids, torch.ones_like(ids), spec, cfg, torch.Generator().manual_seed(0))
        )

    # the graph kept for backward grows linearly with truncate_steps and not at all with steps
    by_truncate = [saved(12, k) for k in (1, 2, 4)]
    assert by_truncate[0] < by_truncate[1] < by_truncate[2]
    assert by_truncate[2] - by_truncate[1] == pytest.approx(2 * (by_truncate[1] - by_truncate[0]), rel=0.05)
    assert saved(6, 2) == saved(12, 2) == saved(24, 2)


def test_kl_is_the_exact_per_step_kl_to_the_reference():
    import contextlib

    model, ref = small_model(seed=0), small_model(seed=1)
    spec = model.diffusion_spec()
    ids = PROMPT.expand(3, -1)
    mask_id = spec.mask_token_id

    def run(reference, steps=1, truncate=1):
        cfg = RelaxedConfig(steps=steps, gen_length=L, tau=0.5, truncate_steps=truncate)

        @contextlib.contextmanager
        def ctx():
            yield reference

        return relaxed_sample(model, ids, torch.ones_like(ids), spec, cfg, torch.Generator().manual_seed(0), ctx)

    # one step from the all-mask state: every position is revealed (r = 1), so the step's KL is
    # sum_i KL(p_theta^i || p_ref^i) at the all-mask input
    x = torch.cat([ids, torch.full((3, L), mask_id)], 1)

    def logp(m):
        lg = m(input_ids=x).logits[:, 3:].float()
        lg[..., mask_id] = -math.inf
        return lg.log_softmax(-1).masked_fill(F.one_hot(torch.tensor(mask_id), V).bool(), 0.0)

    with torch.no_grad():
        expected = (logp(model).exp() * (logp(model) - logp(ref))).sum((-1, -2))  # [3]
    kl = run(ref).kl
    assert torch.allclose(kl, expected, atol=1e-5), (kl, expected)
    assert (run(model, steps=4, truncate=4).kl == 0).all()  # reference = policy -> KL exactly 0
    kl4 = run(ref, steps=4, truncate=4).kl
    assert (kl4 > 0).all() and kl4.requires_grad
    kl4.sum().backward()
    assert torch.isfinite(flat_grad(model)).all()  # the [MASK] column (-inf under both) gives no nan


def test_config_errors_are_clear():
    sdar = small_model("sdar")
    ids = PROMPT.expand(2, -1)
    with pytest.raises(ValueError, match="block_length must be the model's block_size 4"):
        relaxed_sample(sdar, ids, torch.ones_like(ids), sdar.diffusion_spec(), RelaxedConfig(8, 8, block_length=8))
    llada = small_model()
    spec = llada.diffusion_spec()
    with pytest.raises(ValueError, match="truncate_steps must be in"):
        relaxed_sample(llada, ids, torch.ones_like(ids), spec, RelaxedConfig(steps=4, gen_length=4, truncate_steps=5))
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        relaxed_sample(
            llada,
            ids,
            torch.ones_like(ids),
            spec,
            RelaxedConfig(steps=3, gen_length=4, block_length=2, truncate_steps=1),
        )
