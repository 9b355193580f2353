"""Fault injection on training state (issue 17): a non-finite loss stops the run with a clear error
and no NaN checkpoint; resume never unpickles (a planted pickle and a damaged state file are
refused, naming the file); a kill during a stage's evaluation loses nothing; a torn
`metrics.jsonl` tail is dropped with a warning; a bad `resources.ray_address` fails fast; a run
folder whose run failed to start is reusable.

One tiny two-stage SFT run (module fixture, in-process `Pipeline`, one Ray session: a pipeline
releases its workers when it ends) serves as the uninterrupted reference and as the source of
saved training state; the state-file cases fail before Ray starts."""

import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dare.config import build_recipe
from dare.trainer import Pipeline
from dare.trainer.loop import TrainingDivergedError
from dare.trainer.metrics import MetricsLogger, read_metrics
from dare.workers.state_io import StateFileError, load_tree, save_tree

pytestmark = pytest.mark.xdist_group("faults_training")  # one Ray session for the module

SAMPLING = {"algorithm": "llada", "steps": 10, "block_length": 10}
RECIPE = {
    "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
    "data": {"train": "builtin:sort", "num_train": 64, "num_eval": 8, "gen_length": 10},
    "eval": {"num_prompts": 8, "batch_size": 8, "before_first_stage": False, "sampling": SAMPLING},
    "resources": {"num_threads": 1},
    "stages": [
        {"name": "a", "kind": "sft", "algorithm": "sft", "steps": 4, "batch_size": 8, "lr": 1e-3, "save_every": 2,
         "keep_last": 2, "log_every": 100},
        {"name": "b", "kind": "sft", "algorithm": "sft", "steps": 2, "batch_size": 8, "lr": 1e-3, "log_every": 100},
    ],
}  # fmt: skip


def recipe(out: Path, **changes):
    raw = json.loads(json.dumps(RECIPE))
    for key, value in changes.items():  # "resources.ray_address" style keys
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node[p] if not p.isdigit() else node[int(p)]
        node[leaf] = value
    raw["output_dir"] = str(out)
    return build_recipe(raw, "test")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The reference run, started in a folder whose first start failed (bad ray_address)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    with pytest.raises(ValueError) as failed:
        Pipeline(recipe(out, **{"resources.ray_address": "garbage:1"})).run()
    leftovers = sorted(p.name for p in out.iterdir())
    state = Pipeline(recipe(out)).run()
    return {"dir": out, "state": state, "failed": str(failed.value), "leftovers": leftovers}


def interrupted_copy(run: dict, tmp_path: Path) -> Path:
    """The reference run as a run killed in stage 1 after its step-2 save (resumes from step_2)."""
    out = tmp_path / "run"
    shutil.copytree(run["dir"], out)
    for name in ("run_state.json", "report.md"):
        (out / name).unlink()
    for name in ("eval", "stage-2-b", "stage-1-a/checkpoint", "stage-1-a/state/step_4"):
        shutil.rmtree(out / name)
    assert [p.name for p in (out / "stage-1-a" / "state").iterdir()] == ["step_2"]
    return out


# ------------------------------------------------------------------ ray_address, failed start


def test_garbage_ray_address_fails_fast_with_a_clear_error(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"resources.ray_address: cannot reach the Ray cluster at 'garbage:1'"):
        Pipeline(recipe(tmp_path / "r", **{"resources.ray_address": "garbage:1"})).run()
    assert time.perf_counter() - t0 < 30  # ray.init alone retries for minutes
    with pytest.raises(ValueError, match=r"resources.ray_address: 'http://x:1' is not a Ray address"):
        Pipeline(recipe(tmp_path / "s", **{"resources.ray_address": "http://x:1"})).run()


def test_rerun_after_a_failed_start_reuses_the_folder(run, tmp_path):
    # the failed start left the recipe and tokenizer; the fixed recipe (a different hash) ran there
    assert "garbage:1" in run["failed"] and run["leftovers"] == ["recipe.yaml", "tokenizer"]
    assert set(run["state"]["completed"]) == {0, 1}
    saved = yaml.safe_load((run["dir"] / "recipe.yaml").read_text())
    assert saved["resources"]["ray_address"] is None
    # a started run of another recipe is refused, and the message says how to go on
    other = tmp_path / "run"
    shutil.copytree(run["dir"], other)
    with pytest.raises(ValueError, match=r"holds a run of a different recipe.*--resume.*--overwrite"):
        Pipeline(recipe(other, **{"stages.1.lr": 5e-4})).run()
    # --overwrite deletes it (the new start then fails on its own bad address, before Ray)
    with pytest.raises(ValueError, match="resources.ray_address"):
        Pipeline(recipe(other, **{"resources.ray_address": "garbage:1"}), overwrite=True).run()
    assert sorted(p.name for p in other.iterdir()) == ["recipe.yaml", "tokenizer"]
    from dare.cli import main

    assert main(["run", "--resume", str(other), "--overwrite"]) == 2  # resuming never deletes
    assert (other / "recipe.yaml").is_file()
    stray = tmp_path / "not-a-run"
    (stray / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a dare run folder"):
        Pipeline(recipe(stray), overwrite=True).run()
    assert (stray / "x").is_dir()


# ------------------------------------------------------------------ state files: no pickle


def test_planted_pickle_in_optimizer_state_is_refused(run, tmp_path):
    out = interrupted_copy(run, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = out / "stage-1-a" / "state" / "step_2"
    (state / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Payload()}))
    with pytest.raises(StateFileError, match=r"optimizer\.pt: a pickled training-state file; dare does not load"):
        Pipeline.resume(out).run()
    # the same file planted in place of the safetensors pair is refused by name too
    for name in ("optimizer.json", "optimizer.safetensors", "optimizer.pt"):
        (state / name).unlink()
    (state / "algorithm_state.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(StateFileError, match=r"algorithm_state\.pt: a pickled training-state file"):
        Pipeline.resume(out).run()
    with pytest.raises(StateFileError, match=r"algorithm_state\.pt"):
        load_tree(state, "algorithm_state")  # the worker-side loader refuses it as well
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", r"optimizer\.safetensors: not a valid safetensors file"),
        ("manifest", r"optimizer\.json: not valid JSON"),
        ("missing", r"optimizer\.safetensors: missing; the training state in .*step_2 is incomplete"),
        ("foreign", r"optimizer\.safetensors: its tensors do not match its manifest optimizer\.json"),
    ],
)
def test_damaged_state_file_is_refused(run, tmp_path, damage, message):
    out = interrupted_copy(run, tmp_path)
    state = out / "stage-1-a" / "state" / "step_2"
    data, manifest = state / "optimizer.safetensors", state / "optimizer.json"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "manifest":
        manifest.write_text(manifest.read_text()[:50])
    elif damage == "missing":
        data.unlink()
    else:  # a valid safetensors file of other tensors
        save_tree({"x": torch.zeros(3)}, tmp_path, "other")
        shutil.copy(tmp_path / "other.safetensors", data)
    with pytest.raises(StateFileError, match=message):
        Pipeline.resume(out).run()
    with pytest.raises(StateFileError, match=message):
        load_tree(state, "optimizer")


def test_optimizer_moment_of_another_shape_is_refused(run, tmp_path):
    """A well-formed optimizer file whose AdamW moment does not fit its parameter: refused before
    it is loaded (`load_state_dict` would take it and fail, or broadcast, at the next step)."""
    out = interrupted_copy(run, tmp_path)
    state = out / "stage-1-a" / "state" / "step_2"
    tree = load_tree(state, "optimizer")
    moments = next(iter(tree["optimizer"]["state"].values()))
    moments["exp_avg"] = torch.zeros(3, 5)
    save_tree(tree, state, "optimizer")
    with pytest.raises(
        StateFileError, match=r"optimizer\.json: does not fit .*moment 'exp_avg' of parameter \d+ has shape \(3, 5\)"
    ):
        Pipeline.resume(out).run()


def test_state_tree_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tree = {"optimizer": opt.state_dict(), "strategy": "replicate", "n": None}
    save_tree(tree, tmp_path, "optimizer")
    back = load_tree(tmp_path, "optimizer")
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]  # int keys, tuples kept
    for k in (0, 1):
        for name, t in opt.state_dict()["state"][k].items():
            assert torch.equal(back["optimizer"]["state"][k][name], t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]


# ------------------------------------------------------------------ kill during evaluation


def test_kill_during_evaluation_then_resume_keeps_the_results(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = Pipeline.evaluate

    def killed_in_stage_1(self, actor, tokenizer, rows, label):
        if label == "stage-1-a":
            raise KeyboardInterrupt("killed during stage 1's evaluation")
        return real(self, actor, tokenizer, rows, label)

    monkeypatch.setattr(Pipeline, "evaluate", killed_in_stage_1)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(recipe(out)).run()
    state = json.loads((out / "run_state.json").read_text())
    assert state["trained"] == [0] and state["completed"] == [] and state["eval"] == {}
    monkeypatch.setattr(Pipeline, "evaluate", real)

    resumed = Pipeline.resume(out).run()
    assert "stage-1-a is trained; evaluating it" in capsys.readouterr().out
    assert resumed["completed"] == [0, 1] and len(read_metrics(out / "stage-1-a" / "metrics.jsonl")) == 4
    ref = run["state"]
    for key in ("1", "2"):  # the interrupted stage's evaluation is there, and equals the reference's
        assert resumed["eval"][key]["accuracy"] == ref["eval"][key]["accuracy"]
        assert resumed["eval"][key]["examples"] == ref["eval"][key]["examples"]
    a = load_file(run["dir"] / "stage-2-b" / "checkpoint" / "model.safetensors")
    b = load_file(out / "stage-2-b" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results) == {"1", "2"} and (out / "report.md").read_text().count("stage-1-a") == 1


# ------------------------------------------------------------------ torn metrics.jsonl


def test_torn_metrics_tail_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "actor/sft_loss": 1.0 / s} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "actor/sf')
    with pytest.warns(UserWarning, match=rf"{path}: line 4 is torn"):
        assert read_metrics(path) == rows
    logger = MetricsLogger(path, total_steps=10)
    with pytest.warns(UserWarning, match="torn"):
        logger.truncate_after(2)  # what a resume from step 2 does
    assert read_metrics(path) == rows[:2]
    logger.log(3, {"actor/sft_loss": 0.5})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    # damage before the last line is not what a kill leaves: refused, naming file and line
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not a metrics row"):
        read_metrics(path)


# ------------------------------------------------------------------ non-finite loss


def poisoned_checkpoint(tmp_path: Path) -> Path:
    """A finite checkpoint whose output layer is at the float32 limit: every logit is +-inf, the
    loss NaN (what a 1e300 reward does to advantages, without the reward)."""
    from dare.data.tasks import builtin_tokenizer
    from dare.models.checkpoint import save_policy
    from dare.workers.builder import build_policy

    tok = builtin_tokenizer()
    model = build_policy({"family": "llada", "preset": "tiny"}, tok, 0)
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(3e38)
    path = tmp_path / "poisoned"
    save_policy(model, path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("strategy,workers", [("replicate", 1), ("fsdp2", 2)])
def test_non_finite_loss_stops_with_a_clear_error_and_no_nan_checkpoint(tmp_path, strategy, workers):
    model = {"path": str(poisoned_checkpoint(tmp_path)), "tokenizer": "builtin"}
    out = tmp_path / "run"
    r = recipe(out, model=model, **{"resources.strategy": strategy, "resources.num_workers": workers})
    with pytest.raises(TrainingDivergedError, match=r"stage-1-a: step 1/4: the loss or gradient is not finite"):
        Pipeline(r).run()
    stage = out / "stage-1-a"
    assert not (stage / "checkpoint").exists() and not (stage / "state").exists()  # nothing saved
    assert read_metrics(stage / "metrics.jsonl") == []  # the diverged step is not logged
    assert not (out / "run_state.json").exists()  # no stage trained or evaluated
