"""DRAKES (`algorithm: drakes`): learning with a differentiable reward and the alpha trade-off,
LoRA (reference = adapter disabled), differentiable rewards and their checks, recipe validation,
and one stage through the real Pipeline (`dare run`)."""

import contextlib
import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from dare.algorithms import ALGORITHMS
from dare.config import RecipeError, build_recipe
from dare.data.formatting import collate_prompts
from dare.data.tasks import builtin_tokenizer, get_task
from dare.models import tiny
from dare.models.lora import apply_lora
from dare.models.tokenizer import model_token_ids
from dare.rewards.differentiable import (
    DifferentiableReward,
    RewardOutputError,
    build_differentiable_reward,
)
from dare.rewards.differentiable.reward_model import tiny_classifier, train_reward_model
from dare.trainer.stream import BatchStream

# module-scoped fixtures: keep this file's tests on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("drakes")

TOK = builtin_tokenizer()
SEVEN = TOK.convert_tokens_to_ids("7")
REWARD = {"name": "linear", "args": {"scores": {SEVEN: 1.0}}}  # fraction of response tokens that are '7'


def drakes(model, alpha: float, **kw):
    cls = ALGORITHMS.get("drakes")
    args = cls.Args(**{"reward": REWARD, "tau": 0.5, "sampling_steps": 8, "truncate_steps": 4, "gen_length": 8,
                       "alpha": alpha, **kw})  # fmt: skip
    return cls(args, model.diffusion_spec())


def batch_at(stream: BatchStream, step: int) -> dict[str, torch.Tensor]:
    p = collate_prompts(stream.rows_at(step), TOK)
    B = p["input_ids"].shape[0]
    return {"input_ids": p["input_ids"], "attention_mask": p["attention_mask"],
            "noise_seed": stream.noise_seeds(step), "train_step": torch.full((B,), step)}  # fmt: skip


def train(model, reference, alpha: float, steps: int, lr: float, batch_size: int = 16, rows=None, **kw):
    """The actor's update loop in-process (prepare -> compute_loss -> clip -> step); returns the
    per-step (hard reward, KL, fraction of rows with the maximal reward 1: exact match for task_match)."""
    algo = drakes(model, alpha, **kw)
    reward, seen = algo.reward_fn(model.config.vocab_size), []

    def recorded(probs, **ctx):  # the reward, its per-row values kept
        r = reward(probs, **ctx)
        seen.append(r.detach())
        return r

    algo._reward = recorded
    stream = BatchStream(rows or get_task("sort").generate("train", 256, seed=0), batch_size, 0, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    history = []
    for step in range(steps):
        [b] = algo.prepare(model, reference, batch_at(stream, step))
        loss, m = algo.compute_loss(model, b)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append((m["reward/mean"], m["actor/kl"], float((seen[-1] > 1 - 1e-6).float().mean())))
    return history


def frozen_reference(model):
    ref = copy.deepcopy(model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def reference():
        yield ref

    return reference


def mean(xs) -> float:
    return sum(xs) / len(xs)


SORT_G = 6  # sort lists of 3-5 digits: answer + EOS fit 6 positions
TASK_MATCH = {"name": "task_match", "args": {"task": "sort"}}


@pytest.fixture(scope="module")
def sft_sort_model():
    """A briefly SFT'd tiny LLaDA on sort (60 steps): per-token accuracy of its samples ~0.25."""
    from sft_utils import train_sft

    model, _, task, _ = train_sft("llada", "sort", 60, SORT_G, lr=3e-3, batch_size=32, num_train=500,
                                  task_args={"max_len": SORT_G - 1})  # fmt: skip
    return model, task


def test_drakes_with_task_match_raises_task_reward_and_alpha_trades_reward_for_kl(sft_sort_model):
    # DRAKES on sort prompts unseen in SFT with the task-aligned reward (expected fraction of
    # correct answer tokens; on the hard sample, per-token accuracy). Measured (seed 0, 40 steps,
    # tau 1.5, lr 1e-3, first-5 vs last-10 step means): alpha 0.01: 0.37 -> 0.53, KL ~4.1;
    # alpha 0.3: 0.35 -> 0.37, KL ~0.04. Exact match of the (temperature-1) samples barely moves in
    # 40 steps (0 -> ~2%), so it is not asserted; docs/drakes.md has the recipe-scale accuracy.
    base, task = sft_sort_model
    rows = task.generate("train", 800, seed=0)[500:]
    results = {}
    for alpha in (0.01, 0.3):
        model = copy.deepcopy(base)
        hist = train(model, frozen_reference(model), alpha, steps=40, lr=1e-3, rows=rows, reward=TASK_MATCH,
                     tau=1.5, sampling_steps=SORT_G, truncate_steps=SORT_G, gen_length=SORT_G)  # fmt: skip
        start = mean([r for r, _, _ in hist[:5]])
        end_reward, end_kl = mean([r for r, _, _ in hist[-10:]]), mean([k for _, k, _ in hist[-10:]])
        results[alpha] = (start, end_reward, end_kl, mean([e for _, _, e in hist[-10:]]))
        assert hist[0][1] == 0.0  # the first sample is the reference's own: KL exactly 0
        # KL bounded by what alpha implies: a policy whose objective r - alpha KL beats the
        # reference's (r_start, KL 0) has KL <= (r - r_start) / alpha (+ the noise of 10-step means)
        assert end_kl <= (end_reward - start + 0.1) / alpha, results
    (s1, r1, k1, _), (_, r3, k3, _) = results[0.01], results[0.3]
    assert r1 > s1 + 0.12, results  # well above the starting model
    assert r3 < r1 and k3 < k1 / 2, results  # the larger alpha: smaller gain, closer to the reference


def test_drakes_with_lora_uses_the_adapter_disabled_model_as_reference():
    model = apply_lora(tiny("llada", seed=0, **model_token_ids(TOK)), r=4, alpha=8)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}

    @contextlib.contextmanager
    def reference():  # what the actor yields for a LoRA policy
        with model.disable_adapter():
            yield model

    hist = train(model, reference, alpha=0.01, steps=12, lr=1e-2)
    assert hist[0][1] == 0.0  # LoRA B starts at 0: policy == reference
    assert hist[-1][1] > 0.05  # the policy's forwards kept the adapter on
    assert mean([r for r, _, _ in hist[-3:]]) > hist[0][0] + 0.1, hist
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n  # only the adapter trains


def test_logged_reward_is_the_task_accuracy_of_the_hard_sample():
    model = tiny("llada", seed=0, **model_token_ids(TOK))
    algo = drakes(model, alpha=0.0, reward="task_match", gen_length=6, sampling_steps=6, truncate_steps=3)
    algo.args.reward = TASK_MATCH  # what the stage trainer fills in from data.train: builtin:sort
    rows = get_task("sort", max_len=5).generate("train", 8, seed=0)
    stream = BatchStream(rows, 8, 0, 0)
    from dare.algorithms.base import row_generators
    from dare.sampling.relaxed import relaxed_sample

    b = batch_at(stream, 0)
    _, metrics = algo.compute_loss(model, algo.prepare(model, None, b)[0])
    s = relaxed_sample(model, b["input_ids"], b["attention_mask"], algo.spec, algo.config,
                       row_generators(b["noise_seed"]), vocab_size=len(TOK))  # fmt: skip
    acc = []  # per-token accuracy of the hard tokens over answer + EOS, computed from the rows' demonstrations
    for row, toks in zip(stream.rows_at(0), s.tokens.tolist()):
        target = TOK(row["response"], add_special_tokens=False)["input_ids"] + [TOK.eos_token_id]
        acc.append(sum(a == t for a, t in zip(toks, target)) / len(target))
    assert metrics["reward/mean"] == pytest.approx(mean(acc), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# differentiable rewards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn,message",
    [
        (lambda p: p.sum(-1), r"returned shape \(4, 6\); expected \[B\] = \[4\]"),
        (lambda p: p.sum((-1, -2)) / torch.tensor([1.0, 0.0, 1.0, 1.0]), r"non-finite values at rows \[1\]"),
        (lambda p: 1.0, r"returned float; expected a tensor"),
        (lambda p: (p.sum((-1, -2)) > 0).long(), r"dtype torch.int64; expected a float tensor"),
    ],
)
def test_bad_reward_outputs_fail_with_a_clear_message(fn, message):
    reward = DifferentiableReward(fn, "mine")
    with pytest.raises(RewardOutputError, match=message) as e:
        reward(torch.rand(4, 6, 10))
    assert "differentiable reward 'mine'" in str(e.value)


def test_a_bad_plugin_reward_fails_inside_training(tmp_path):
    plugin = tmp_path / "my_reward.py"
    plugin.write_text("def per_position(token_probs, token=7):\n    return token_probs[..., token]\n")
    model = tiny("llada", seed=0, **model_token_ids(TOK))
    algo = drakes(model, alpha=0.0, reward={"path": f"{plugin}:per_position", "args": {"token": SEVEN}})
    stream = BatchStream(get_task("sort").generate("train", 8, seed=0), 4, 0, 0)
    with pytest.raises(RewardOutputError, match=r"'per_position' returned shape \(4, 8\); expected \[B\] = \[4\]"):
        algo.compute_loss(model, batch_at(stream, 0))


def test_plugin_and_linear_rewards(tmp_path):
    plugin = tmp_path / "prompt_aware.py"
    plugin.write_text(
        "def fn(token_probs, scale=1.0, prompt_ids=None, prompt_mask=None):\n"
        "    return scale * token_probs[..., 0].sum(-1) + prompt_mask.sum(-1)\n"
    )
    r = build_differentiable_reward({"path": f"{plugin}:fn", "args": {"scale": 2.0}})
    probs = torch.zeros(2, 3, 5)
    probs[..., 0] = 1.0
    out = r(
        probs, prompt_ids=torch.zeros(2, 4, dtype=torch.long), prompt_mask=torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    )
    assert out.tolist() == [10.0, 9.0]  # the prompt reaches a reward that declares it
    lin = build_differentiable_reward({"name": "linear", "args": {"scores": {2: 1.0, 4: -1.0}}}, vocab_size=5)
    onehot = F.one_hot(torch.tensor([[2, 4, 2], [1, 1, 4]]), 5).float()
    assert lin(onehot).tolist() == pytest.approx([1 / 3, -1 / 3])
    with pytest.raises(ValueError, match=r"token id 9 is outside the vocabulary \[0, 5\)"):
        build_differentiable_reward({"name": "linear", "args": {"scores": {9: 1.0}}}, vocab_size=5)


def prompts_of(*texts):
    p = collate_prompts([{"prompt": t} for t in texts], TOK)
    return p["input_ids"], p["attention_mask"]


def test_task_match_is_per_token_accuracy_on_hard_samples_and_linear_in_probs():
    reward = build_differentiable_reward({"name": "task_match", "args": {"task": "sort"}})
    ids, mask = prompts_of("sort 3121", "sort 90")
    L = 7

    def onehot(*texts):  # responses laid out like the policy's: text + EOS padding
        rows = [TOK(t, add_special_tokens=False)["input_ids"] for t in texts]
        return F.one_hot(torch.tensor([r + [TOK.eos_token_id] * (L - len(r)) for r in rows]), len(TOK)).float()

    assert reward(onehot("1123", "09"), prompt_ids=ids, prompt_mask=mask).tolist() == [1.0, 1.0]
    # one wrong digit of 4 + EOS; a missing EOS ("09" followed by '9'); padding after the EOS is not scored
    wrong = onehot("1133", "099")
    assert reward(wrong, prompt_ids=ids, prompt_mask=mask).tolist() == pytest.approx([4 / 5, 2 / 3])
    assert reward(onehot("1123", "09") * 0 + onehot("1123", "09"), prompt_ids=ids, prompt_mask=mask)[0] == 1.0
    probs = torch.rand(2, L, len(TOK)).softmax(-1).requires_grad_()
    r = reward(probs, prompt_ids=ids, prompt_mask=mask)
    r.sum().backward()
    target = torch.tensor([TOK.convert_tokens_to_ids(c) for c in "1123"] + [TOK.eos_token_id])
    assert float(r[0]) == pytest.approx(float(probs[0, torch.arange(5), target].mean()))
    expected = torch.zeros(L, len(TOK))
    expected[torch.arange(5), target] = 1 / 5  # d r / d probs: 1/n at the target entries of the scored positions
    assert torch.equal(probs.grad[0], expected)
    padded = build_differentiable_reward({"name": "task_match", "args": {"task": "sort", "include_padding": True}})
    assert padded(wrong, prompt_ids=ids, prompt_mask=mask).tolist() == pytest.approx([6 / 7, 6 / 7])
    exact = build_differentiable_reward({"name": "task_match", "args": {"task": "sort", "reduce": "prod"}})
    assert exact(wrong, prompt_ids=ids, prompt_mask=mask).tolist() == [0.0, 0.0]


def test_task_match_targets_of_other_tasks_and_errors():
    reward = build_differentiable_reward({"name": "task_match", "args": {"task": "addition"}})
    assert reward.fn.answer_ids(prompts_of("123+45")[0][0].tolist()) == TOK("168")["input_ids"][-3:] + [1]
    sudoku = build_differentiable_reward({"name": "task_match", "args": {"task": "sudoku"}})
    row = get_task("sudoku").generate("train", 1, seed=0)[0]
    expected = TOK(row["ground_truth"]["solution"], add_special_tokens=False)["input_ids"] + [TOK.eos_token_id]
    assert sudoku.fn.answer_ids(prompts_of(row["prompt"])[0][0].tolist()) == expected
    with pytest.raises(KeyError, match="countdown"):
        build_differentiable_reward({"name": "task_match", "args": {"task": "countdown"}})
    with pytest.raises(ValueError, match="set args.task"):
        build_differentiable_reward("task_match")
    with pytest.raises(ValueError, match="needs the prompt"):
        reward(torch.rand(1, 4, len(TOK)))


def test_reward_model_wrapper_reads_soft_embeddings(tmp_path):
    clf = tiny_classifier(len(TOK), TOK.pad_token_id, seed=0)
    clf.save_pretrained(tmp_path / "rm")
    reward = build_differentiable_reward({"name": "reward_model", "args": {"path": str(tmp_path / "rm")}})
    prompt = torch.tensor([[0, 3, 12, 13], [3, 14, 15, 16]])
    pmask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    tokens = torch.tensor([[9, 10, 11], [12, 13, 1]])
    probs = F.one_hot(tokens, len(TOK)).float().requires_grad_()
    out = reward(probs, prompt_ids=prompt, prompt_mask=pmask)
    with torch.no_grad():  # the classifier on token ids: the same score for one-hot inputs
        ids = torch.cat([prompt, tokens], 1)
        mask = torch.cat([pmask, torch.ones_like(tokens)], 1)
        expected = clf.eval()(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    assert probs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"classifier's vocabulary \(56 embeddings\) differs from the policy's \(40\)"):
        reward(torch.rand(2, 3, 40))


def test_train_reward_model_saves_a_loadable_classifier(tmp_path):
    # a smoke-size run (the CLI default of 300+ steps is what reaches above-chance accuracy)
    res = train_reward_model("sort", tmp_path / "rm", gen_length=10, num_samples=64, steps=3, batch_size=16)
    assert 0.0 <= res["heldout_accuracy"] <= 1.0
    reward = build_differentiable_reward({"name": "reward_model", "args": {"path": str(tmp_path / "rm")}})
    assert reward(torch.rand(2, 10, len(TOK)).softmax(-1)).shape == (2,)


# ---------------------------------------------------------------------------------------------
# recipes and the pipeline
# ---------------------------------------------------------------------------------------------


def drakes_recipe(**stage) -> dict:
    return {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "num_train": 16, "num_rl_prompts": 64, "num_eval": 16, "gen_length": 8},
        "eval": {"enabled": False, "sampling": {"algorithm": "llada", "steps": 8, "block_length": 8}},
        "resources": {"num_threads": 1},
        "stages": [{"kind": "rl", "algorithm": "drakes", "steps": 8, "batch_size": 16, "grad_accum": 2, "lr": 3e-3,
                    "log_every": 1, "reward": REWARD, "sampling_steps": 8, "truncate_steps": 4, "alpha": 0.01,
                    "alpha_warmup_steps": 4, **stage}],
    }  # fmt: skip


@pytest.mark.parametrize(
    "stage,key,message",
    [
        ({"reward": {"name": "linaer"}}, "stages[0].reward", "did you mean 'linear'?"),
        ({"reward": "countdown"}, "stages[0].reward", "reward 'countdown' is a text reward"),
        ({"reward": {}}, "stages[0].reward", "is required"),
        ({"reward": {"name": "linear", "args": {"scorez": {}}}}, "stages[0].reward", "bad args"),
        ({"truncate_steps": 20}, "stages[0].truncate_steps", "need 1 <= truncate_steps <= sampling_steps=8"),
        ({"tau": 0.0}, "stages[0].tau", "invalid value 0.0"),
    ],
)
def test_drakes_recipe_errors_name_the_key(stage, key, message):
    with pytest.raises(RecipeError) as e:
        build_recipe(drakes_recipe(**stage), "r.yaml")
    assert str(e.value).startswith(f"r.yaml: {key}: "), str(e.value)
    assert message in str(e.value)


def test_drakes_stage_runs_through_the_pipeline(tmp_path):
    # 4 steps of 8 prompts in 2 micro-batches, alpha warmed up over 4 steps, `reward: task_match`
    # with its task filled in from data.train (builtin:sort); ~20 s, mostly Ray start-up
    path = tmp_path / "recipe.yaml"
    stage = {"reward": "task_match", "steps": 4, "batch_size": 8}
    path.write_text("# test recipe\n" + yaml.safe_dump(drakes_recipe(**stage)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dare.cli", "run", str(path), f"output_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "stage-1-drakes" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for key in ("reward/mean", "actor/kl", "actor/grad_norm", "actor/alpha", "perf/max_memory_mb", "perf/step_s"):
        assert key in rows[-1], key
    assert [r["actor/alpha"] for r in rows] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in rows) and rows[0]["actor/kl"] == 0.0
    assert (out / "stage-1-drakes" / "checkpoint" / "model.safetensors").is_file()
