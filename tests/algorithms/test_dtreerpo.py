"""d-TreeRPO (arXiv 2512.09675), the math: branch points and the tree, value propagation and
local advantages on a hand-computed tree, the sibling-centring property, transition log-probs
that reproduce the sampler's per-token probabilities when a segment is one step, the segment
loss against DARE's written-out formula, self-distillation on hand-computed cases, and a tiny
learning run with a test-local tree rollout.

The registered algorithm (`algorithm: dtreerpo`): the tree rollout through dare's sampler (shape,
children start from their parent's state, a one-branch tree reproduces the plain sampler), leaf
rewards -> hand-computed advantages and segments, learning through `train_toy`, and the recipe
checks."""

import math
import sys
from pathlib import Path

import pytest
import torch

from dare.algorithms.dtreerpo import (
    Tree,
    branch_points,
    local_advantages,
    propagate_values,
    self_distillation_loss,
    self_distillation_schedule,
    transition_mask,
    transition_plan,
    tree_segment_loss,
)
from dare.diffusion.estimators import view_logp
from dare.diffusion.trajectory import trajectory_states
from dare.models import tiny
from dare.models.spec import aligned_logits
from dare.sampling import engine
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import process_logits
from dare.sampling.generate import generate

V = 16
M, EOS = V - 1, V - 2  # tiny models' mask and eos ids


def test_branch_points_and_tree_shape():
    assert branch_points(128, 2) == [128, 64, 0]  # DARE's LLaDA recipe: T 128, s 2
    assert branch_points(10, 3) == [10, 7, 4, 0]
    assert branch_points(2, 4) == [2, 1, 0]  # deduplicated
    tree = Tree.build(num_tree_samples=2, branch_factor=3, num_levels=2)
    assert tree.parent.tolist() == [-1, 0, 0, 1, 1, 1, 2, 2, 2]
    assert tree.level.tolist() == [0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert tree.leaves.tolist() == [3, 4, 5, 6, 7, 8]


def test_values_and_local_advantages_on_a_hand_computed_tree():
    # root -> 1, 2; 1 -> leaves 3, 4; 2 -> leaves 5, 6; rewards 1, 0, 1, 1
    tree = Tree.build(2, 2, 2)
    v = propagate_values(tree, torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    assert v[0].tolist() == [0.75, 0.5, 1.0, 1.0, 0.0, 1.0, 1.0]
    a = local_advantages(tree, v)
    assert a[0].tolist() == [0.0, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0]
    # an only child keeps its value (DARE: the sibling mean defaults to 0)
    only = Tree.build(1, 1, 1)
    assert local_advantages(only, propagate_values(only, torch.tensor([[0.3]])))[0, 1].item() == pytest.approx(0.3)


def test_values_are_subtree_leaf_means_and_sibling_advantages_are_centred():
    tree = Tree.build(3, 4, 3)  # 3 x 4 x 4 = 48 leaves
    r = torch.rand(5, tree.leaves.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = propagate_values(tree, r)
    a = local_advantages(tree, v)
    torch.testing.assert_close(v[:, 0], r.mean(-1))  # equal branching: the root is the leaf mean
    torch.testing.assert_close(v[:, 1], r[:, :16].mean(-1))  # the first child's 16 leaves
    for p in range(tree.parent.shape[0]):
        kids = tree.parent == p
        if kids.any():  # sum_i (v_i - mean_{j != i} v_j) = 0 for every sibling group
            torch.testing.assert_close(a[:, kids].sum(-1), torch.zeros(5, dtype=torch.float64))


def test_transition_mask_counts_the_newly_unmasked_tokens_up_to_the_first_eos():
    completion = torch.tensor([[0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    parent = torch.tensor([[7, 3, M, M, M, M]])
    child = torch.tensor([[7, 3, 5, EOS, M, EOS]])  # unmasks 2, 3 (eos) and 5 (after the eos)
    assert transition_mask(parent, child, completion, M, EOS).int().tolist() == [[0, 0, 1, 1, 0, 0]]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_one_step_transitions_reproduce_the_samplers_token_probabilities(family):
    # contraction s = T: every segment is one sampler step, so logp(child | parent) at the tokens
    # the step unmasked is the log-probability the sampler drew them with (T = 1). EOS is
    # suppressed (logits_eos_inf) so no response has a tail the Rollout overwrites with EOS, and
    # every state the sampler saw can be rebuilt from decode_step.
    model = tiny(family, V).eval()
    L = 6
    cfg = SamplingConfig(
        algorithm=family, gen_length=L, steps=3, temperature=1.0, num_generations=2, logits_eos_inf=True
    )
    out = generate(model, [[5, 6, 7], [8, 9, 10]], cfg, torch.Generator().manual_seed(0))
    assert out.response_mask.all()
    states = trajectory_states(out.response_ids, out.decode_step, 4, M)  # [4, N, L], state j before step j
    P, N = out.prompt_ids.shape[1], out.response_ids.shape[0]
    completion = torch.cat([torch.zeros(N, P, dtype=torch.bool), torch.ones(N, L, dtype=torch.bool)], 1)
    seen = torch.zeros(N, L, dtype=torch.bool)
    for j in range(3):
        parent = torch.cat([out.prompt_ids, states[j]], 1)
        child = torch.cat([out.prompt_ids, states[j + 1]], 1)
        batch = {"input_ids": child, "attention_mask": torch.ones_like(child), "response_mask": completion}
        plan = transition_plan(parent, child, completion, M, EOS)
        with torch.no_grad():
            lp = view_logp(model, batch, plan, model.diffusion_spec())[:, 0, P:]  # [N, L]
        U = plan.weights[:, 0, P:] > 0
        assert torch.equal(U, (out.decode_step == j) & out.response_mask)
        # dare's samplers give [MASK] (and here EOS) probability 0; the model's softmax keeps them,
        # so the model's probability is the sampler's times P(neither)
        full = torch.cat([out.prompt_ids, states[j]], 1)
        with torch.no_grad():
            logits = model(full, attention_mask=torch.ones_like(full)).logits
            logits = aligned_logits(logits, model.diffusion_spec())[:, P:].double()
        p_drop = torch.softmax(logits, -1)[..., [M, EOS]].sum(-1)  # [N, L]
        expected = out.confidence * (1 - p_drop)
        torch.testing.assert_close(lp.exp().double()[U], expected[U], atol=1e-5, rtol=1e-4)
        seen |= U
    assert torch.equal(seen, out.response_mask)


def test_sdar_segments_score_each_block_from_the_state_the_sampler_decoded_it_from(monkeypatch):
    # SDAR, 2 blocks of 4 over 4 steps (2 per block), prompts of 3 and 2 tokens (padded, off the block
    # grid). Segments [0, 1), [1, 3), [3, 4): the middle one ends block 0 and starts block 1. Block
    # attention scores a token of block k from the parent's state of block k with the child's blocks
    # before k, which is the state of the segment's first step in block k: every segment here takes
    # one step per block, so its log-prob is the sum of the sampler's log-probs over its steps.
    seen = []  # the model logits of every sampler step, as the engine receives them

    def spy(logits, *args):
        seen.append(logits.double().log_softmax(-1))  # [N, 4, V]
        return process_logits(logits, *args)

    monkeypatch.setattr(engine, "process_logits", spy)
    model = tiny("sdar", V).eval()
    spec = model.diffusion_spec()
    cfg = SamplingConfig(algorithm="sdar", gen_length=8, steps=4, block_length=4, temperature=1.0,
                         num_generations=2, logits_eos_inf=True)  # fmt: skip
    out = generate(model, [[5, 6, 7], [8, 9]], cfg, torch.Generator().manual_seed(0))
    assert out.response_mask.all() and len(seen) == 4
    N, P, L = 4, out.prompt_ids.shape[1], 8
    states = trajectory_states(out.response_ids, out.decode_step, 5, M)  # [5, N, L], state j before step j
    sampler_lp = torch.zeros(N, L, dtype=torch.float64)  # log-prob of each token at its decode step
    for j in range(4):
        lo = 4 * (j // 2)
        drawn = out.decode_step[:, lo : lo + 4] == j
        step_lp = seen[j].gather(-1, out.response_ids[:, lo : lo + 4, None])[..., 0]
        sampler_lp[:, lo : lo + 4] = torch.where(drawn, step_lp, sampler_lp[:, lo : lo + 4])
    from rl_toy import algorithm

    algo = algorithm("dtreerpo", spec)
    prompt_mask = out.prompt_mask.long()
    for a, b in [(0, 1), (1, 3), (3, 4)]:
        parent = torch.cat([out.prompt_ids, states[a]], 1)
        child = torch.cat([out.prompt_ids, states[b]], 1)
        completion = torch.cat([torch.zeros(N, P, dtype=torch.bool), torch.ones(N, L, dtype=torch.bool)], 1)
        batch = {
            "input_ids": child, "parent_input_ids": parent, "response_mask": completion,
            "attention_mask": torch.cat([prompt_mask, torch.ones(N, L, dtype=torch.long)], 1),
            "transition_mask": transition_mask(parent, child, completion, M, EOS),
        }  # fmt: skip
        with torch.no_grad():
            lp = algo.logp(model, batch)[:, P:].double()  # [N, L], 0 outside U(n)
        U = batch["transition_mask"][:, P:]
        assert torch.equal(U, (out.decode_step >= a) & (out.decode_step < b))
        torch.testing.assert_close(lp[U], sampler_lp[U], atol=1e-5, rtol=0)
        torch.testing.assert_close(lp.sum(-1), torch.where(U, sampler_lp, 0.0).sum(-1), atol=1e-5, rtol=0)


def test_segment_loss_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    B, L, eps = 6, 5, 0.4
    old, new, ref = (torch.randn(B, L, generator=g, dtype=torch.float64) * 0.3 for _ in range(3))
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    active = torch.rand(B, L, generator=g) < 0.6
    active[0] = False  # a segment with no unmasked token contributes 0
    loss, _ = tree_segment_loss(old, new, adv, active, eps, ref_log_prob=ref, beta=0.01)
    expected = 0.0
    for b in range(B):  # DARE llada_dp_actor_dtreerpo.update_policy, row by row
        r = torch.exp(new[b] - old[b])
        obj = torch.minimum(r * adv[b], r.clamp(1 - eps, 1 + eps) * adv[b])
        d = ref[b] - new[b]
        kl = torch.exp(d) - d - 1
        n = max(int(active[b].sum()), 1)
        expected += (-(obj * active[b]).sum() / n + 0.01 * (kl * active[b]).sum() / n) / B
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_self_distillation_on_hand_computed_cases():
    logp = torch.log_softmax(torch.tensor([[[0.2, -0.1, 0.5]]], dtype=torch.float64), -1)  # [1, 1, 3]
    # children vote 0, 0, 1 with A = 1, 1, -1: only the two positives, equal weights -> q = onehot(0)
    kl = self_distillation_loss(logp, torch.tensor([[[0], [0], [1]]]), torch.ones(1, 3, 1, dtype=torch.bool),
                                torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64), tau=0.7)  # fmt: skip
    assert kl.item() == pytest.approx(-logp[0, 0, 0].item(), rel=1e-6)
    # tokens 0, 1, 2 with A = 1, 0.5, -1 and tau 0.5: q = (e^2, e^1, 0) / (e^2 + e)
    kl = self_distillation_loss(logp, torch.tensor([[[0], [1], [2]]]), torch.ones(1, 3, 1, dtype=torch.bool),
                                torch.tensor([[1.0, 0.5, -1.0]], dtype=torch.float64), tau=0.5)  # fmt: skip
    q = torch.tensor([math.e**2, math.e, 0.0], dtype=torch.float64) / (math.e**2 + math.e)
    expected = sum(q[i] * (math.log(q[i]) - logp[0, 0, i]) for i in range(2))
    assert kl.item() == pytest.approx(expected.item(), rel=1e-6)
    # no positive child: 0 (with a graph)
    zero = self_distillation_loss(logp.requires_grad_(), torch.zeros(1, 2, 1, dtype=torch.long),
                                  torch.ones(1, 2, 1, dtype=torch.bool), -torch.ones(1, 2), tau=1.0)  # fmt: skip
    assert zero.item() == 0.0 and zero.requires_grad


def test_self_distillation_schedule():
    assert self_distillation_schedule(0, 100, 3e-3, 2.0, 2.0, 0.7) == (0.0, 2.0)
    lam, tau = self_distillation_schedule(50, 100, 3e-3, 2.0, 2.0, 0.7)
    assert lam == pytest.approx(3e-3 / (math.e + 1)) and tau == pytest.approx(2.0 * 0.5**0.7)
    assert self_distillation_schedule(200, 100, 3e-3, 2.0, 2.0, 0.7) == (pytest.approx(3e-3), 1e-6)


def denoise(model, x, n_tokens, completion, g):
    """Test-local sampler: unmask `n_tokens` uniformly chosen masked completion positions, one per
    model call, each drawn from the model's softmax (mask excluded) in float64."""
    x = x.clone()
    for _ in range(n_tokens):
        with torch.no_grad():
            probs = torch.softmax(model(x, attention_mask=torch.ones_like(x)).logits.double(), -1)
        probs[..., M] = 0
        masked = (x == M) & completion
        pick = torch.multinomial(masked.double(), 1, generator=g).squeeze(-1)  # [B]
        rows = torch.arange(x.shape[0])
        x[rows, pick] = torch.multinomial(probs[rows, pick], 1, generator=g).squeeze(-1)
    return x


def tree_train(steps: int) -> tuple[float, float]:
    """4 prompts, trees G 4 x branch 2 over T = 4 steps with s = 2 (branch at step 2): 8 leaves and
    12 segments per prompt; reward = fraction of the 4 response tokens equal to 3. Returns the mean
    leaf reward of one tree per prompt before and after `steps` updates."""
    torch.manual_seed(0)
    model = tiny("llada", V)
    spec = model.diffusion_spec()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    tree = Tree.build(4, 2, 2)
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 4], [4, 13, 5]])
    P, L = 3, 4
    root = torch.cat([prompts, torch.full((4, L), M)], 1)
    completion = torch.zeros_like(root, dtype=torch.bool)
    completion[:, P:] = True
    g = torch.Generator().manual_seed(0)

    def reward(x):
        return (x[:, P:] == 3).double().mean(-1)

    def grow():
        nodes = [root]
        for n in range(1, tree.parent.shape[0]):
            nodes.append(denoise(model.eval(), nodes[int(tree.parent[n])], 2, completion, g))
        return torch.stack(nodes, 1)  # [4, N, P+L]

    before = float(torch.stack([reward(grow()[:, leaf]) for leaf in tree.leaves]).mean())
    for _ in range(steps):
        nodes = grow()
        adv = local_advantages(tree, propagate_values(tree, torch.stack([reward(nodes[:, i]) for i in tree.leaves], 1)))
        segs = torch.arange(1, tree.parent.shape[0])
        parent = nodes[:, tree.parent[segs]].reshape(-1, P + L)  # [4 * 12, P+L]
        child = nodes[:, segs].reshape(-1, P + L)
        comp = completion.repeat_interleave(len(segs), 0)
        batch = {"input_ids": child, "attention_mask": torch.ones_like(child), "response_mask": comp}
        plan = transition_plan(parent, child, comp, M, EOS)
        lp = (view_logp(model.train(), batch, plan, spec) * plan.weights).sum(1)  # [48, P+L]
        loss, _ = tree_segment_loss(lp.detach(), lp, adv[:, segs].reshape(-1).float(), plan.weights[:, 0] > 0, 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(torch.stack([reward(grow()[:, leaf]) for leaf in tree.leaves]).mean())
    return before, after


def test_dtreerpo_learns_a_rewarded_token_with_a_tiny_tree():
    # measured (seed 0, CPU fp32): see docs/algorithms/dtreerpo.md
    before, after = tree_train(8)
    assert before < 0.15 and after > before + 0.3, (before, after)


# --- the registered algorithm and its tree rollout --------------------------------------------------

sys.path.insert(0, str(Path(__file__).parent))
from rl_toy import train_toy  # noqa: E402

from dare.algorithms.dtreerpo import TreeRollout, grow_tree, sibling_self_distillation  # noqa: E402
from dare.config.schema import build_recipe  # noqa: E402
from dare.errors import RecipeError  # noqa: E402
from dare.sampling.backend import DareSamplerBackend, RowGenerators, row_seed  # noqa: E402
from dare.sampling.engine import prepare_prompts  # noqa: E402

VT = 48  # the tree tests' vocabulary (the toy reward's)
MT = VT - 1


def tree_setup(family="llada", **sampling):
    model = tiny(family, VT, seed=0).eval()
    spec = model.diffusion_spec()
    config = SamplingConfig(**{"algorithm": family, "gen_length": 8, "steps": 8, "temperature": 1.0, **sampling})
    p = prepare_prompts([[5, 6, 7], [8, 9]], spec, 1, torch.device("cpu"))
    backend = DareSamplerBackend(model, "cpu")

    def continue_fn(ids, mask, resp, seeds, first, n):
        return backend.continue_generate((ids, mask), resp, config, seeds.tolist(), first, n)

    return model, config, p.input_ids, p.attention_mask, continue_fn


@pytest.mark.parametrize("family,sampling", [("llada", {}), ("sdar", {"cache": "none"})])
def test_the_tree_rollout_has_the_trees_shape_and_children_start_from_their_parents_state(family, sampling):
    # T = 8 steps in 2 blocks, s = 4: branch points 8, 6, 4, 2, 0; every step unmasks one token (no EOS)
    _, config, ids, mask, continue_fn = tree_setup(family, block_length=4, logits_eos_inf=True, **sampling)
    tree = Tree.build(2, 2, 4)  # 1 + 2 + 4 + 8 + 16 nodes
    states = grow_tree(tree, branch_points(8, 4), ids, mask, torch.tensor([3, 4]), 8, MT, continue_fn)
    assert states.shape == (2, 31, 8)
    assert (states[:, 0] == MT).all()
    for n in range(1, 31):
        parent, child = states[:, int(tree.parent[n])], states[:, n]
        committed = parent != MT
        assert torch.equal(child[committed], parent[committed])  # the child continues its parent
        # level k has run 2k steps of one token each
        assert ((child != MT).sum(-1) == 2 * int(tree.level[n])).all()
    leaves = states[:, tree.leaves]
    assert (leaves != MT).all()
    # siblings differ (each child has its own seed); 16 leaves per prompt are not all alike
    assert all(len(set(map(tuple, leaves[b].tolist()))) > 8 for b in range(2))


@pytest.mark.parametrize(
    "family,sampling,levels",
    [("llada", {"block_length": 1}, 8), ("dream", {"block_length": 1}, 8),
     ("sdar", {"block_length": 4, "cache": "none"}, 2)],
)  # fmt: skip
def test_a_one_branch_tree_reproduces_the_plain_sampler(family, sampling, levels):
    model, config, ids, mask, continue_fn = tree_setup(family, **sampling)
    # every segment one block (LLaDA, Dream: one-step blocks, s = T; SDAR: its 2 blocks of 4 steps),
    # each continued with the prompt's own seed: the leaf is the plain sampler's response for that
    # seed, token for token
    seeds = [row_seed(3, 0), row_seed(4, 0)]
    chain = Tree.build(1, 1, levels)
    same_seed = lambda i, m, r, s, first, n: continue_fn(
        i, m, r, torch.tensor(seeds).repeat_interleave(len(r) // 2), first, n
    )  # noqa: E731
    leaf = grow_tree(chain, branch_points(8, levels), ids, mask, torch.tensor([3, 4]), 8, MT, same_seed)[:, -1]
    plain = generate(model, (ids, mask), config, generator=RowGenerators(seeds, "cpu"))
    eos = model.diffusion_spec().eos_token_id
    after = (leaf == eos).long().cumsum(-1) - (leaf == eos).long() > 0
    assert torch.equal(leaf.masked_fill(after, eos), plain.response_ids)
    # s = 1 with the tree's own seeds: leaf n is the plain sampler's response for row_seed(seed, n)
    star = Tree.build(2, 1, 1)
    leaves = grow_tree(star, branch_points(8, 1), ids, mask, torch.tensor([3, 4]), 8, MT, continue_fn)[:, 1:]
    own = [row_seed(s, n) for s in (3, 4) for n in (1, 2)]
    ids2, mask2 = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    plain2 = generate(model, (ids2, mask2), config, generator=RowGenerators(own, "cpu")).response_ids
    after = (leaves == eos).long().cumsum(-1) - (leaves == eos).long() > 0
    assert torch.equal(leaves.masked_fill(after, eos).reshape(4, 8), plain2)


def test_leaf_rewards_become_hand_computed_advantages_and_segments():
    # a 2 x 2 tree over T = 4 steps (branch at step 2); a scripted continue_fn, so every node is known
    tree, L = Tree.build(2, 2, 2), 4
    ids, mask = torch.tensor([[5, 6], [7, 8]]), torch.ones(2, 2, dtype=torch.bool)
    EOS_T = 46
    calls = []

    def continue_fn(i, m, resp, seeds, first, n):
        calls.append((len(resp), first, n))
        out = resp.clone()
        for r in range(len(out)):  # level 1 writes [1 + r % 2, 3]; level 2 writes [3 or 9, EOS]
            if first == 0:
                out[r, :2] = torch.tensor([1 + r % 2, 3])
            else:
                out[r, 2:] = torch.tensor([3 if r % 4 in (0, 1, 2) else 9, EOS_T])
        return out

    scored = []

    def score_fn(prompt_index, responses, rmask):
        scored.append(prompt_index)
        return ((responses == 3) & rmask).sum(-1).div(4.0).tolist(), {"reward/x": 1.0}

    shape = TreeRollout(tree, [4, 2, 0], L, MT, (EOS_T,))
    out = shape.collect(ids, mask, torch.tensor([0, 1]), continue_fn, score_fn)
    assert calls == [(4, 0, 2), (8, 2, 2)]  # one call per level: 2 prompts x 2, then 2 x 4 nodes
    assert scored == [[0, 0, 0, 0, 1, 1, 1, 1]]
    # leaves of each prompt: [1,3,3,E] [1,3,3,E] [2,3,3,E] [2,3,9,E]: rewards 0.5 0.5 0.5 0.25
    assert out.scores.tolist() == [0.5, 0.5, 0.5, 0.25] * 2
    # values: node 1 = 0.5, node 2 = 0.375; A(1) = 0.125, A(2) = -0.125; leaves 0, 0, 0.25, -0.25
    a = out.batch["advantages"].view(2, 6)
    torch.testing.assert_close(a[0], torch.tensor([0.125, -0.125, 0.0, 0.0, 0.25, -0.25]))
    assert torch.equal(a[0], a[1])
    b = out.batch
    assert b["input_ids"].shape == (12, 6) and b["group_index"].tolist() == [0] * 6 + [1] * 6
    assert b["node_index"].tolist() == [1, 2, 3, 4, 5, 6] * 2
    assert b["input_ids"][0].tolist() == [5, 6, 1, 3, MT, MT]  # node 1: [prompt | its state]
    assert b["parent_input_ids"][0].tolist() == [5, 6, MT, MT, MT, MT]  # the root
    assert b["parent_input_ids"][2].tolist() == [5, 6, 1, 3, MT, MT]  # node 3's parent: node 1
    # U(n): level-1 segments unmask columns 2-3, level-2 ones columns 4-5 (the EOS included)
    assert b["transition_mask"][0].tolist() == [False, False, True, True, False, False]
    assert b["transition_mask"][2].tolist() == [False, False, False, False, True, True]
    assert b["response_mask"][0].tolist() == [False, False, True, True, True, True]


@pytest.mark.parametrize("family,steps,gain", [("llada", 15, 0.5), ("dream", 20, 0.25), ("sdar", 12, 0.35)])
def test_dtreerpo_learns_the_toy_reward_through_its_tree_rollout(family, steps, gain):
    # G 2 x branch 2, T = 4 steps, s = 2: 4 leaves and 6 segments per prompt, 3 prompts
    # (SDAR: one block of 4, resumed without a KV cache)
    sdar = {"sampling": {"algorithm": "sdar", "steps": 4, "temperature": 1.0, "cache": "none"}}
    rewards = train_toy(
        "dtreerpo", family, steps=steps, gen_length=4, num_generations=2, branch_factor=2,
        **(sdar if family == "sdar" else {}),
    )  # fmt: skip
    # measured (2-core CPU, seed 0): see docs/algorithms/dtreerpo.md
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + gain, rewards


def tree_recipe(family="llada", **stage) -> dict:
    sdar = {"algorithm": "sdar", "steps": 12, "block_length": 4, "cache": "none"}
    sampling = sdar if family == "sdar" else {"algorithm": family}
    return {
        "model": {"family": family, "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": 12},
        "eval": {"enabled": False, "sampling": sampling},
        "stages": [{"kind": "rl", "algorithm": "dtreerpo", "steps": 1, "batch_size": 2, "num_generations": 2,
                    "sampling": {**sampling, "steps": 12}, **stage}],
    }  # fmt: skip


def test_a_dtreerpo_recipe_loads_with_its_settings():
    args = build_recipe(tree_recipe(branch_factor=3, contraction=3, beta=0.01)).stages[0].args
    assert (args.num_generations, args.branch_factor, args.contraction, args.beta) == (2, 3, 3, 0.01)


def test_an_sdar_dtreerpo_recipe_passes_the_dry_run(tmp_path, capsys):
    import yaml

    from dare.cli import main

    path = tmp_path / "dtreerpo_sdar.yaml"
    path.write_text(yaml.safe_dump(tree_recipe("sdar", branch_factor=3)))
    assert main(["run", str(path), "--dry-run"]) == 0
    assert f"# {path}: valid (1 stage(s))" in capsys.readouterr().out


@pytest.mark.parametrize(
    "family,stage,key,message",
    [
        ("sdar", {"sampling": {"algorithm": "sdar", "steps": 12}}, "stages[0]",
         "resuming a partial state needs cache='none'"),
        ("llada", {"sampling": {"algorithm": "llada", "steps": 12, "cache": "prefix"}}, "stages[0]",
         "resuming a partial state needs cache='none'"),
        ("llada", {"sampling": {"algorithm": "llada", "steps": 12, "threshold": 0.9}}, "stages[0]",
         "fixed number of steps per block"),
        ("llada", {"contraction": 13}, "stages[0]", "contraction=13 exceeds the sampling's 12 steps"),
        ("llada", {"branch_factor": 0}, "stages[0].branch_factor", ">= 1"),
        ("llada", {"dynamic_sampling": {"enabled": True}}, "stages[0].dynamic_sampling", "not supported by dtreerpo"),
    ],
)  # fmt: skip
def test_recipe_load_refuses_what_the_tree_cannot_run(family, stage, key, message):
    with pytest.raises(RecipeError, match=message) as e:
        build_recipe(tree_recipe(family, **stage))
    assert key in str(e.value)


def test_only_a_backend_that_resumes_serves_the_tree():
    with pytest.raises(RecipeError, match="'sglang' cannot continue partial responses") as e:
        build_recipe(tree_recipe("llada", rollout_backend="sglang"))
    assert "stages[0].rollout_backend" in str(e.value)


def test_the_memory_plan_counts_the_trees_segments_and_widest_level():
    from dare.config.memory_plan import plan_recipe

    def plan_terms(stage: dict) -> dict[str, int]:
        raw = tree_recipe()
        raw["stages"] = [{"kind": "rl", "steps": 1, "batch_size": 2, **stage}]
        (planned,) = plan_recipe(build_recipe(raw)).stages
        return {t.name.split(" (")[0]: t.nbytes for t in planned.terms}

    sampling = {"algorithm": "llada", "steps": 12}
    # G 2 x branch 3: 2 + 6 = 8 segments per prompt to train on, 6 rows in the widest sampler call
    tree = plan_terms({"algorithm": "dtreerpo", "num_generations": 2, "branch_factor": 3, "sampling": sampling})
    as_8 = plan_terms({"algorithm": "d1", "num_generations": 8, "sampling": sampling})
    as_6 = plan_terms({"algorithm": "d1", "num_generations": 6, "sampling": sampling})
    acts = [k for k in tree if k.startswith("activations")]
    rollout = [k for k in tree if "logits" in k]
    assert acts and rollout
    assert all(tree[k] == as_8[k] for k in acts) and all(tree[k] == as_6[k] for k in rollout)


def test_sibling_self_distillation_equals_the_dense_term_on_a_segment_batch():
    # 3 parents x 3 children over 5 positions; the parents' full distributions are known, each
    # child's transition log-prob is its parent's log-prob of its token (what the forward gives)
    g = torch.Generator().manual_seed(0)
    P, C, L, Vd = 3, 3, 5, 7
    parent_lp = torch.log_softmax(torch.randn(P, L, Vd, generator=g, dtype=torch.float64), -1).requires_grad_()
    tokens = torch.randint(0, Vd, (P, C, L), generator=g)
    tokens[0, 1] = tokens[0, 0]  # two children agree on every position
    active = torch.rand(P, C, L, generator=g) < 0.6
    adv = torch.tensor([[0.5, 0.2, -0.7], [-0.1, -0.3, 0.4], [-1.0, -0.5, 0.0]], dtype=torch.float64)
    dense = self_distillation_loss(parent_lp, tokens, active, adv, tau=0.7)
    (g_dense,) = torch.autograd.grad(dense, parent_lp)
    lp = parent_lp.gather(-1, tokens.transpose(1, 2)).transpose(1, 2).reshape(P * C, L)  # [rows, L]
    group = torch.arange(P).repeat_interleave(C)
    sparse = sibling_self_distillation(
        lp, tokens.reshape(P * C, L), active.reshape(P * C, L), adv.reshape(-1), group, tau=0.7
    )
    (g_sparse,) = torch.autograd.grad(sparse, parent_lp)
    torch.testing.assert_close(sparse, dense, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(g_sparse, g_dense, atol=1e-7, rtol=1e-6)
    assert dense.item() > 0
    # no positive child: 0
    zero = sibling_self_distillation(
        lp, tokens.reshape(P * C, L), active.reshape(P * C, L), -adv.abs().reshape(-1), group, 0.7
    )
    assert zero.item() == 0.0


def test_self_distillation_adds_lambda_t_times_the_term_and_needs_whole_groups_per_micro_batch():
    from rl_toy import algorithm

    model, _, ids, mask, continue_fn = tree_setup(block_length=4)
    spec = model.diffusion_spec()
    kw = {"num_generations": 2, "branch_factor": 2, "contraction": 2, "sampling": {"algorithm": "llada", "steps": 8}}
    plain = algorithm("dtreerpo", spec, **kw)
    with_sd = algorithm("dtreerpo", spec, **kw, self_distillation=True, sd_lambda_max=0.5)
    shape = type(plain).rollout_shape(plain.args, spec, 8)

    def scores(prompt_index, responses, rmask):  # spread rewards: every sibling group has positive advantages
        return (((responses == 10) & rmask).sum(-1).float() + torch.arange(len(prompt_index)) % 3).tolist(), {}

    batch = shape.collect(ids, mask, torch.tensor([3, 4]), continue_fn, scores).batch
    batch["train_progress"] = torch.full((len(batch["input_ids"]),), 0.5, dtype=torch.float64)
    loss0, _ = plain.compute_loss(model, batch)
    loss1, m = with_sd.compute_loss(model, batch)
    lam, tau = self_distillation_schedule(0.5, 1.0, 0.5, 2.0, 2.0, 0.7)
    assert (m["actor/sd_lambda"], m["actor/sd_tau"]) == (lam, tau) and m["actor/sd_loss"] > 0
    torch.testing.assert_close(loss1 - loss0, torch.tensor(lam * m["actor/sd_loss"]), atol=1e-6, rtol=1e-5)
    del batch["train_progress"]
    with pytest.raises(KeyError, match="train_progress"):
        with_sd.compute_loss(model, batch)
    # it trains in process
    rewards = train_toy("dtreerpo", "llada", steps=4, gen_length=4, num_generations=2, branch_factor=2,
                        self_distillation=True)  # fmt: skip
    assert len(rewards) == 4
    # 4 prompts x (2 + 4) segments over 2 workers x grad_accum 4: 3 segments per micro-batch, half a tree
    raw = tree_recipe(self_distillation=True, batch_size=4, grad_accum=4, branch_factor=2)
    raw["resources"] = {"num_workers": 2}
    with pytest.raises(RecipeError, match="self_distillation needs whole prompts' trees") as e:
        build_recipe(raw)
    assert "stages[0].grad_accum" in str(e.value)
    raw["stages"][0]["grad_accum"] = 2  # one prompt's tree per micro-batch
    assert build_recipe(raw).stages[0].args.self_distillation
