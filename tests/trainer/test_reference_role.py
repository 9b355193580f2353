"""`resources.reference: separate`: the frozen reference in its own worker group gives the colocated
run's numbers. GRPO (d1, beta > 0, with reference syncs) and VRPO steps on an actor whose reference
is colocated and on one whose reference lives in a ReferenceWorker: identical metrics (KL, loss,
reference ELBO terms) and reference weights. Exactly equal, not to a tolerance: the noise plan, the
views and the log-softmax run in the actor either way; only the forward moves, with the same
weights, the same inputs and the same CPU kernels (one thread per worker). A DiDi-Instruct stage, whose
teacher is the reference (its surprise forwards remote, its discriminator built from its fetched
weights, its cached samples drawn by the reference workers), gives the colocated stage's numbers too.
DRAKES, which backpropagates through its reference, is refused in a separate group at recipe load."""

import json

import pytest
import ray
import torch
from verl import DataProto

from dare.config import ResourcesSpec, build_recipe
from dare.config.loader import RecipeError
from dare.config.schema import build_stage, stage_to_dict
from dare.data.formatting import collate_preference, collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.trainer.distill import TEACHER_CACHE, DistillTrainer
from dare.trainer.metrics import rank_zero_metrics
from dare.trainer.pipeline import reference_group
from dare.trainer.runtime import release, worker_group
from dare.trainer.stage import StageContext
from dare.workers.actor import ActorWorker
from dare.workers.reference import placement
from dare.workers.state_io import load_tree

pytestmark = pytest.mark.xdist_group("reference_role")

MODEL = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": {}}
B = 4


def _seeds(step: int) -> torch.Tensor:
    return torch.randint(0, 2**62, (B, 1), generator=torch.Generator().manual_seed(100 + step))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference_role")
    tok = builtin_tokenizer()
    tok.save_pretrained(tmp / "tok")
    rows = get_task("sort").generate("train", B, seed=0)
    b = collate_sft(rows, tok, gen_length=10)
    rl = {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")}
    rl["advantages"] = (
        torch.randn(B, generator=torch.Generator().manual_seed(0))[:, None]
        .expand_as(b["response_mask"])
        .float()
        .clone()
    )
    pairs = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": r["response"][::-1]} for r in rows]
    p = collate_preference(pairs, tok, gen_length=10, truncate=True)
    pref = {f"{s}_{k}": p[f"{s}_{k}"] for s in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "response_mask")}  # fmt: skip

    def batch(kind: str, step: int) -> DataProto:
        seeds = _seeds(step) if kind == "rl" else _seeds(step)[:, 0]  # preference rows: one seed each, [B]
        return DataProto.from_dict(tensors={**(rl if kind == "rl" else pref), "noise_seed": seeds})

    batch.rows = rows  # the distill stage's prompts
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield tmp, batch
    ray.shutdown()


@pytest.fixture(scope="module")
def actors(setup):
    """One actor with a colocated reference and one with a separate reference worker, built once:
    each test starts its own stage on both (as a later stage of a run does), so they stay equal."""
    tmp, _ = setup
    groups = {}
    for separate in (False, True):
        res = ResourcesSpec(num_workers=1, num_threads=1, reference="separate" if separate else "colocated")
        name = "separate" if separate else "colocated"
        wg = worker_group(ActorWorker, res, name=name)
        wg.init_model(MODEL, str(tmp / "tok"), 0, None, None)
        ref = None
        if placement(res) == "separate":
            ref = reference_group(wg, res, name=f"{name}_ref")  # the pipeline's (one node: placed as Ray chooses)
            ref.init_model(MODEL, str(tmp / "tok"), 0, None)
            wg.attach_reference(ref.workers)
        groups[separate] = wg, ref
    yield groups
    for wg, ref in groups.values():
        release(wg)
        release(ref)


def run(actors, batch, kind: str, raw: dict, separate: bool) -> tuple[list[dict], list[float]]:
    """A stage of `raw` on one of the actors. Per step: the metrics (timings dropped) and the
    reference's checksum after the step."""
    wg, _ = actors[separate]
    stage = build_stage(raw, "s", None)
    wg.init_stage(stage_to_dict(stage), stage.args, raw["steps"])
    metrics, refs = [], []
    for s in range(raw["steps"]):
        m = rank_zero_metrics(wg.update_actor(batch(kind, s)).meta_info["metrics"])
        metrics.append({k: v for k, v in m.items() if not k.startswith("perf/")})
        refs.append(wg.reference_checksum()[0])
    return metrics, refs


def test_separate_reference_gives_the_colocated_kl_and_syncs(setup, actors):
    _, batch = setup
    raw = {"kind": "rl", "algorithm": "d1", "steps": 3, "batch_size": B, "lr": 1e-2, "beta": 0.5, "mu": 1,
           "ref_sync_every": 2}  # fmt: skip
    colocated, ref_c = run(actors, batch, "rl", raw, separate=False)
    separate, ref_s = run(actors, batch, "rl", raw, separate=True)
    assert colocated[1]["actor/kl"] > 1e-5  # the policy moved away from the reference: a real KL
    assert separate == colocated  # KL, loss, grad norm, ref syncs: bit for bit
    assert ref_s == ref_c and ref_s[0] != ref_s[1]  # the 2nd update synced both references alike


def test_separate_reference_gives_the_colocated_vrpo_step(setup, actors):
    _, batch = setup
    raw = {"kind": "preference", "algorithm": "vrpo", "steps": 2, "batch_size": B, "lr": 1e-2, "beta": 0.5}
    colocated, _ = run(actors, batch, "preference", raw, separate=False)
    separate, _ = run(actors, batch, "preference", raw, separate=True)
    assert separate == colocated
    assert any(abs(v) > 0 for k, v in colocated[1].items() if "loss" in k)  # a non-trivial step


def distill(setup, actors, separate: bool) -> tuple[list[dict], torch.Tensor, float]:
    """A 2-step DiDi-Instruct stage through the distill stage trainer (`fit`: teacher samples cached
    first, then `init_stage` and the steps) on one of the actors. Its metrics (timings dropped), the
    cached teacher samples and the policy's checksum after the stage."""
    tmp, batch = setup
    wg, ref = actors[separate]
    raw = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"gen_length": 8},
        "resources": {"reference": "separate" if separate else "colocated"},
        "stages": [{"kind": "distill", "algorithm": "didi_instruct", "steps": 2, "batch_size": 2, "lr": 1e-2,
                    "num_generations": 2, "disc_warmup_steps": 1, "disc_updates": 1, "disc_unfrozen_blocks": 1,
                    "log_every": 1}],
    }  # fmt: skip
    recipe = build_recipe(raw)
    sdir = tmp / f"distill_{'separate' if separate else 'colocated'}"
    ctx = StageContext(
        recipe=recipe, index=0, stage=recipe.stages[0], dir=sdir, actor=wg, tokenizer=builtin_tokenizer(),
        train_rows=batch.rows, base_dir=None, start_step=0, reference=ref,
    )  # fmt: skip
    DistillTrainer(ctx).fit()
    rows = [json.loads(line) for line in (sdir / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]
    return metrics, load_tree(sdir, TEACHER_CACHE)["responses"], wg.state_checksum()[0]


def test_separate_teacher_gives_the_colocated_didi_stage(setup, actors):
    colocated, samples_c, policy_c = distill(setup, actors, separate=False)
    separate, samples_s, policy_s = distill(setup, actors, separate=True)
    assert samples_s.shape == (B, 2, 8) and torch.equal(samples_s, samples_c)  # the same cached teacher samples
    assert len(colocated) == 2 and colocated[1]["actor/grad_norm"] > 0  # step 2 trains the student
    for key in ("disc/loss", "disc/accuracy", "reward/mean", "actor/pg_loss", "didi/teacher_accuracy"):
        assert key in colocated[1], key
    assert separate == colocated  # student loss, discriminator loss/accuracy, rewards: bit for bit
    assert policy_s == policy_c


def test_a_reference_backpropagated_through_is_refused_in_separate_workers():
    stage = {"kind": "rl", "algorithm": "drakes", "steps": 2, "batch_size": 4, "reward": "task_match"}
    recipe = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "resources": {"reference": "separate"},
        "stages": [stage],
    }
    with pytest.raises(RecipeError, match=rf"resources\.reference.*{stage['algorithm']}.*colocated"):
        build_recipe(recipe)
    recipe["resources"]["reference"] = "elsewhere"
    with pytest.raises(RecipeError, match=r"resources\.reference.*colocated"):
        build_recipe(recipe)
