"""DiDi-Instruct: the few-step trajectory, the discriminator (separation and calibration on a known
density ratio), the reward plumbing, the guided sampler, and the stage through the real Pipeline."""

import json
import math

import pytest
import torch
import yaml

from dare.algorithms import ALGORITHMS
from dare.algorithms.didi import group_normalise, noise_pair, states_after_steps, step_advantages
from dare.algorithms.didi_discriminator import DiffusionDiscriminator, log_ratio
from dare.config import RecipeError, load_recipe
from dare.data.tasks import builtin_tokenizer
from dare.diffusion.trajectory import per_step_logp, trajectory_token_logp
from dare.models import tiny
from dare.models.spec import aligned_logits
from dare.models.tokenizer import model_token_ids
from dare.sampling import SamplingConfig, generate
from dare.sampling.few_step import sample_trajectory
from dare.sampling.guided import Guidance, GuidedModel
from dare.workers.state_io import load_tree

DIGITS = [str(d) for d in range(10)]


def _model(seed=0):
    tok = builtin_tokenizer()
    return tiny("llada", seed=seed, **model_token_ids(tok)), tok


def _digit_ids(tok):
    return torch.tensor(tok.convert_tokens_to_ids(DIGITS))


def test_few_step_trajectory_logp_is_exact_and_differentiable():
    model, tok = _model()
    spec = model.diffusion_spec()
    ids = torch.tensor([[5, 6, 7], [spec.pad_token_id, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    traj = sample_trajectory(model, spec, ids, mask, 6, 3, 1.0, "random", torch.Generator().manual_seed(0))
    assert (traj.response != spec.mask_token_id).all()
    assert sorted(traj.step_of[0].tolist()) == [0, 0, 1, 1, 2, 2]  # split_evenly(6, 3)
    lp = per_step_logp(
        trajectory_token_logp(model, spec, ids, mask, traj.response, traj.step_of, 3, 1.0), traj.step_of, 3
    )
    expected = torch.stack([torch.where(traj.step_of == j, traj.logp, 0.0).sum(-1) for j in range(3)], -1)
    torch.testing.assert_close(lp.double(), expected, atol=1e-5, rtol=1e-5)
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # the registered sampler returns the same trajectory
    r = generate(model, (ids, mask), SamplingConfig(algorithm="few_step", gen_length=6, steps=3, temperature=1.0,
                                                      remasking="random"), torch.Generator().manual_seed(0))  # fmt: skip
    assert r.nfe == 3
    torch.testing.assert_close(r.extras["logp"][r.response_mask], traj.logp[r.response_mask])


def test_states_noise_and_advantages():
    resp = torch.tensor([[3, 4, 5, 6]])
    step_of = torch.tensor([[1, 0, 1, 0]])
    after = states_after_steps(resp, step_of, 2, 99)
    assert after[0].tolist() == [[99, 4, 99, 6]] and after[1].tolist() == [[3, 4, 5, 6]]
    g = torch.Generator().manual_seed(0)
    student = after[0].repeat(500, 1)
    zs, zt, t = noise_pair(student, resp.repeat(500, 1), 99, g)
    counts_s, counts_t = (zs == 99).sum(-1), (zt == 99).sum(-1)
    assert torch.equal(counts_s, counts_t) and torch.equal(t, counts_s.double() / 4)
    assert set(counts_s.tolist()) == {2, 3}  # from the state's own 2 masks up to L - 1
    assert ((zs != 99) <= (after[0] != 99)).all()  # noise only adds masks
    zs0, _, _ = noise_pair(student, resp.repeat(500, 1), 99, g, noise_max=0.0)
    assert torch.equal(zs0, student)
    r = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 0.0], [5.0, 4.0]])
    a = group_normalise(r, 2)
    torch.testing.assert_close(a[:, 1], torch.tensor([-1.0, 1.0, -1.0, 1.0]) / math.sqrt(2), atol=1e-5, rtol=0)
    assert torch.equal(a[2:, 0], torch.zeros(2))  # no spread in the group: no signal
    torch.testing.assert_close(step_advantages(torch.tensor([[1.0, 2.0]]), 0.5), torch.tensor([[2.5, 2.0]]))


def _train_disc(D, sample_pair, steps, lr, smoothing):
    """BCE steps with the algorithm's own discriminator update."""
    algo = ALGORITHMS.get("didi_instruct")(ALGORITHMS.get("didi_instruct").Args(label_smoothing=smoothing),
                                           D.backbone.diffusion_spec())  # fmt: skip
    algo.discriminator = D
    algo.disc_optimizer = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        prompt, zs, zt, t = sample_pair(torch.Generator().manual_seed(step))
        algo.discriminator_step(prompt, torch.ones_like(prompt), zs, zt, t)
    return algo


def test_discriminator_separates_teacher_noised_from_uniform():
    teacher, tok = _model()
    spec, digits = teacher.diffusion_spec(), _digit_ids(tok)
    D = DiffusionDiscriminator(teacher, unfrozen_blocks=1)
    assert not any(p.requires_grad for p in D.backbone.get_input_embeddings().parameters())
    assert any(p.requires_grad for p in D.backbone.parameters())
    L = 8

    def pair(g, n=64):
        # "teacher" samples: sorted digit strings (what a sort teacher writes); "student": uniform tokens
        teach = digits[torch.randint(0, 10, (n, L), generator=g)].sort(-1).values
        rand = torch.randint(0, spec.mask_token_id, (n, L), generator=g)
        zs, zt, t = noise_pair(rand, teach, spec.mask_token_id, g, noise_max=0.5)
        return torch.full((n, 2), digits[0]), zs, zt, t

    algo = _train_disc(D, pair, 80, 3e-3, 0.1)
    prompt, zs, zt, t = pair(torch.Generator().manual_seed(10_000), 256)
    with torch.no_grad():
        D.eval()
        ls, lt = algo.discriminator_logits(prompt, torch.ones_like(prompt), zs, t), algo.discriminator_logits(
            prompt, torch.ones_like(prompt), zt, t)  # fmt: skip
    acc = ((ls > 0).float().mean() + (lt < 0).float().mean()) / 2
    assert acc > 0.9, acc


def test_discriminator_log_ratio_is_calibrated_on_a_known_ratio():
    """Responses of i.i.d. digits: teacher uniform over 0-9, student 0.16 on 0-4 and 0.04 on 5-9.
    The true log ratio of a noised response is the sum over its visible digits of log(q_s/q_t).
    One plain view: with complementary views the untrained backbone's surprise term (its
    pseudo-log-likelihood prior) is noise on this synthetic data and 80 steps do not discount it
    (corr 0.63)."""
    teacher, tok = _model(1)
    spec, digits = teacher.diffusion_spec(), _digit_ids(tok)
    D = DiffusionDiscriminator(teacher, unfrozen_blocks=1, views=1)
    L, smoothing = 6, 0.1
    q_s = torch.tensor([0.16] * 5 + [0.04] * 5)

    def pair(g, n=128):
        s = torch.multinomial(q_s, n * L, replacement=True, generator=g).view(n, L)
        te = torch.randint(0, 10, (n, L), generator=g)
        zs, zt, t = noise_pair(digits[s], digits[te], spec.mask_token_id, g)
        return torch.full((n, 2), digits[0]), zs, zt, t

    algo = _train_disc(D, pair, 80, 3e-3, smoothing)
    prompt, zs, _, t = pair(torch.Generator().manual_seed(10_000), 512)
    with torch.no_grad():
        D.eval()
        est = log_ratio(algo.discriminator_logits(prompt, torch.ones_like(prompt), zs, t), smoothing)
    per_digit = torch.log(q_s / 0.1)
    lookup = torch.zeros(len(tok))
    lookup[digits] = per_digit
    true = lookup[zs].sum(-1)  # masked positions (mask id -> 0) carry no ratio
    slope = float(((est - est.mean()) * (true - true.mean())).sum() / ((true - true.mean()) ** 2).sum())
    corr = float(torch.corrcoef(torch.stack([est, true]))[0, 1])
    assert corr > 0.9 and 0.7 < slope < 1.3, (corr, slope)


def test_complementary_views_read_each_token_from_the_pass_that_hid_it():
    """views = 2: a visible response token's logit = head(hidden state of the pass where it was
    masked) + scale * (-log p(token | that pass)); masked and prompt positions come from pass 0
    with no surprise term; token distributions (one-hot) give the same logits as ids."""
    model, tok = _model()
    spec = model.diffusion_spec()
    D = DiffusionDiscriminator(model, unfrozen_blocks=1, views=2).eval()
    with torch.no_grad():
        D.surprise_scale.fill_(0.7)
        D.head[2].weight.normal_()  # a non-zero head
    M = spec.mask_token_id
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, M, 11], [5, 6, 12, 13, M, M, 14, 15]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    resp = torch.zeros_like(valid)
    resp[:, 2:] = True
    t = torch.tensor([0.2, 0.4])
    with torch.no_grad():
        out = D(ids, valid, t, response_mask=resp, generator=torch.Generator().manual_seed(3))
        # the split the forward drew: the same generator, the same keys
        keys = torch.rand(2, 8, generator=torch.Generator().manual_seed(3))
        visible = resp & (ids != M)
        view = keys.masked_fill(~visible, 2.0).argsort(-1).argsort(-1) % 2
        expected = torch.zeros(2, 8)
        for k in range(2):
            hide = visible & (view == k)
            h, logp = D._backbone(ids.masked_fill(hide, M), valid, None)
            full = D._head(h, t) + 0.7 * -logp.gather(-1, ids[..., None]).squeeze(-1)
            if k == 0:
                expected = D._head(h, t)  # non-visible positions: pass 0, no surprise
            expected = torch.where(hide, full, expected)
        torch.testing.assert_close(out, expected)
        assert ((view[visible] == 0).sum() - (view[visible] == 1).sum()).abs() <= 2  # balanced views
        probs = torch.nn.functional.one_hot(ids, model.config.vocab_size).float()
        soft = D(None, valid, t, token_probs=probs, response_mask=resp, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(soft, out, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="response_mask"):
        D(ids, valid, t)


def test_surprise_stays_the_frozen_teachers_while_the_backbone_trains():
    """frozen_surprise (default): the views' surprise term is the teacher's -log p(token | view)
    even after BCE has moved the trainable backbone; without it the surprise follows the backbone.
    The frozen copy is not a parameter, not in the state dict, and moves with `.to()`."""
    model, tok = _model()
    spec = model.diffusion_spec()
    M = spec.mask_token_id
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, M, 11], [5, 6, 12, 13, M, M, 14, 15]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    resp = torch.zeros_like(valid)
    resp[:, 2:] = True
    hide = resp & (ids != M) & (torch.arange(8) % 2 == 0)  # one view's hidden tokens

    def surprise(m):  # -log p(token | view) at the hidden positions, from model m
        with torch.no_grad():
            logits = m(ids.masked_fill(hide, M), attention_mask=valid).logits
            logp = aligned_logits(logits, spec).float().log_softmax(-1)
        return -logp.gather(-1, ids[..., None]).squeeze(-1)[hide]

    for frozen in (True, False):
        D = DiffusionDiscriminator(model, unfrozen_blocks=1, views=2, frozen_surprise=frozen).eval()
        trainable = {n for n, p in D.named_parameters() if p.requires_grad}
        with torch.no_grad():  # what BCE training does to the unfrozen blocks
            for n, p in D.named_parameters():
                if n in trainable and n.startswith("backbone."):
                    p.add_(0.3 * torch.randn_like(p))
            _, logp = D._backbone(ids.masked_fill(hide, M), valid, None)
        got = -logp.gather(-1, ids[..., None]).squeeze(-1)[hide]
        torch.testing.assert_close(got, surprise(model) if frozen else surprise(D.backbone))
        if not frozen:  # training did move the backbone's surprise away from the teacher's
            assert (got - surprise(model)).abs().max() > 1e-3
        assert not any(k.startswith("_frozen") for k in D.state_dict())
        assert len(list(D.parameters())) == len(list(DiffusionDiscriminator(model, 1, views=1).parameters())) + 1
    D = DiffusionDiscriminator(model, unfrozen_blocks=1, views=2).double()
    assert next(D._frozen[0].parameters()).dtype == torch.float64


def test_prepare_scores_only_the_samples_without_intermediate_matching():
    """intermediate_weight 0: every student step gets the sample's normalised reward (the
    intermediate states are not scored); > 0: earlier steps also collect intermediate rewards.
    The discriminator's bias is set from the first batch (median logit 0)."""
    from contextlib import contextmanager

    model, tok = _model()
    spec = model.diffusion_spec()
    cls = ALGORITHMS.get("didi_instruct")
    G, N, L = 4, 8, 6
    batch = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 9, 10]]).repeat_interleave(G, 0),
        "attention_mask": torch.ones(N, 3, dtype=torch.long),
        "teacher_response": torch.randint(4, 20, (N, L), generator=torch.Generator().manual_seed(0)),
        "noise_seed": torch.full((N,), 7),
        "step": torch.zeros(N, dtype=torch.long),
    }

    @contextmanager
    def reference():
        yield model

    for weight in (0.0, 1.0):
        algo = cls(cls.Args(num_generations=G, student_steps=3, disc_warmup_steps=0, intermediate_weight=weight,
                            disc_unfrozen_blocks=1), spec)  # fmt: skip
        (out,) = algo.prepare(model, reference, batch)
        adv = out["advantages"]  # [N, S]
        assert adv.shape == (N, 3) and adv.abs().sum() > 0
        if weight == 0:
            assert torch.equal(adv[:, 0], adv[:, 2]) and torch.equal(adv[:, 1], adv[:, 2])
        else:
            assert not torch.equal(adv[:, 0], adv[:, 2])
        assert bool(algo.discriminator.bias_initialised) and algo.discriminator.bias.item() != 0.0


def test_discriminator_state_round_trips_through_extra_state():
    """The actor saves `extra_state()` with the training state; a resumed stage restores it when
    its discriminator is built (lazily, in the first `prepare`)."""
    teacher, _ = _model()
    cls = ALGORITHMS.get("didi_instruct")
    first = cls(cls.Args(disc_unfrozen_blocks=1), teacher.diffusion_spec())
    assert first.extra_state() is None
    first.build_discriminator(teacher)
    with torch.no_grad():
        first.discriminator.head[2].weight.add_(0.5)  # differs from a fresh build
    state = first.extra_state()
    resumed = cls(cls.Args(disc_unfrozen_blocks=1), teacher.diffusion_spec())
    resumed.load_extra_state(state)
    resumed.build_discriminator(teacher)
    for (name, a), b in zip(first.discriminator.state_dict().items(), resumed.discriminator.state_dict().values()):
        assert torch.equal(a, b), name


def test_reward_guided_sampler_runs_and_rejects_a_bare_model():
    model, tok = _model()
    D = DiffusionDiscriminator(model, unfrozen_blocks=1)
    prompts = [[5, 6, 7], [8, 9]]
    cfg = SamplingConfig(algorithm="rgas", gen_length=6, steps=4, temperature=1.0)
    r = generate(GuidedModel(model, D, Guidance(num_candidates=3)), prompts, cfg, torch.Generator().manual_seed(0))
    assert r.response_ids.shape == (2, 6) and (r.response_ids != model.diffusion_spec().mask_token_id).all()
    with pytest.raises(ValueError, match="GuidedModel"):
        generate(model, prompts, cfg)


def test_bad_didi_arguments_name_the_key(tmp_path):
    base = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "gen_length": 10},
        "eval": {"sampling": {"algorithm": "few_step", "steps": 2}},
        "stages": [{"kind": "distill", "algorithm": "didi_instruct", "steps": 2, "temperature": 0.0}],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(RecipeError, match=r"stages\[0\].temperature"):
        load_recipe(path)
    base["stages"][0].pop("temperature")
    base["stages"][0]["teacher_sampling"] = {"algorithm": "nope"}
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(RecipeError, match=r"stages\[0\].teacher_sampling"):
        load_recipe(path)


@pytest.mark.slow
def test_didi_stage_through_the_pipeline_gives_an_ordinary_checkpoint(tmp_path):
    """SFT -> didi_instruct via `Pipeline` (Ray, the actor worker) with the quickstart recipe, then
    the student checkpoint is loaded the way `dare generate` loads it and sampled in 4 steps, and
    evaluated by `dare eval`'s OpenCompass run. The distill stage caches teacher samples for its
    own `num_rl_prompts` prompts, not the SFT rows."""
    from dare.config import build_recipe
    from dare.models.checkpoint import load_policy
    from dare.trainer import Pipeline

    raw = yaml.safe_load(open("recipes/didi_quickstart.yaml"))
    raw["data"].update(num_train=32, num_rl_prompts=24, num_eval=16)
    raw["eval"].update(num_prompts=16, before_first_stage=False)
    raw["stages"][0].update(steps=150, batch_size=16)
    raw["stages"][1].update(steps=3, batch_size=4, num_generations=4, disc_warmup_steps=1, log_every=1)
    raw["output_dir"] = str(tmp_path / "run")
    state = Pipeline(build_recipe(raw, "recipes/didi_quickstart.yaml")).run()
    stage = tmp_path / "run" / "stage-2-didi"
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for key in ("disc/accuracy", "disc/loss", "reward/mean", "didi/log_ratio_final", "didi/teacher_accuracy",
                "actor/pg_loss"):  # fmt: skip
        assert key in rows[-1], key
    assert rows[0]["actor/grad_norm"] == 0.0 and rows[-1]["actor/grad_norm"] > 0  # warm-up: discriminator only
    assert load_tree(stage, "teacher_samples")["responses"].shape == (24, 4, 10)
    assert "2" in state["eval"]
    model = load_policy(str(stage / "checkpoint"))
    tok = builtin_tokenizer()
    r = generate(model, [tok("sort 3142").input_ids], SamplingConfig(algorithm="few_step", gen_length=10, steps=4))
    assert r.nfe == 4 and r.response_ids.shape == (1, 10)
    # `dare eval` (OpenCompass) on the student checkpoint at its 4 steps scores what dare's own
    # sampler and the rows' scorer (direction: either) give on the same prompts
    from dare.data.formatting import collate_prompts
    from dare.data.tasks import get_task
    from dare.evals import EvalRequest, run_benchmarks
    from dare.trainer.evaluate import row_scorer

    sampling = {"algorithm": "few_step", "gen_length": 10, "steps": 4, "temperature": 0.0}
    req = EvalRequest(model=str(stage / "checkpoint"), benchmarks=["sort"], work_dir=str(tmp_path / "oc"), limit=16,
                      sampling=sampling, seed=0, task_args={"sort": {"direction": "either"}}, timeout=300)  # fmt: skip
    score = run_benchmarks(req)["benchmarks"]["sort"]["score"]
    rows = get_task("sort", direction="either").generate("eval", 16, seed=0)
    p = collate_prompts(rows, tok)
    r = generate(model.eval(), (p["input_ids"], p["attention_mask"]), SamplingConfig(**sampling), torch.Generator())
    texts = [tok.decode(ids[m].tolist(), skip_special_tokens=True) for ids, m in zip(r.response_ids, r.response_mask)]
    assert score == pytest.approx(100 * sum(row_scorer(row)(t) for row, t in zip(rows, texts)) / 16)
