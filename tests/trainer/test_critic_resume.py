"""The critic's state survives a resume: a TraceRL stage with its value model (the critic worker),
stopped after its step-2 save and resumed, logs exactly the metrics of the uninterrupted run
(critic loss and values included) and ends with the same policy and value-model weights; the
critic's files sit in every `state/step_N`, and a state without them is refused before Ray starts.

One tiny in-process run (module fixture, one Ray session) is the uninterrupted reference; the
resumed run is a copy of it cut back to its step-2 state (what a kill after that save leaves)."""

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dare.config import build_recipe
from dare.trainer import Pipeline
from dare.trainer.metrics import read_metrics
from dare.workers.state_io import StateFileError, load_tree

pytestmark = pytest.mark.xdist_group("critic_resume")  # one Ray session for the module

SAMPLING = {"algorithm": "llada", "steps": 4, "block_length": 4, "temperature": 1.0}
# a graded reward from the completion's text: the critic has returns to fit from the first step
REWARD = "def graded(prompt, response, ground_truth=None):\n    return (sum(map(ord, response)) % 7) / 6\n"
STEPS = 4


def recipe(out: Path, reward: Path):
    raw = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "num_train": 16, "gen_length": 4},
        "eval": {"enabled": False, "sampling": SAMPLING},
        "resources": {"num_threads": 1},
        "output_dir": str(out),
        "stages": [
            {"name": "trace", "kind": "rl", "algorithm": "tracerl", "steps": STEPS, "batch_size": 2,
             "num_generations": 4, "lr": 1e-3, "use_value_model": True, "critic_lr": 1e-2, "shrink": 2,
             "save_every": 2, "keep_last": 3, "log_every": 100, "sampling": SAMPLING,
             "rewards": [{"path": f"{reward}:graded"}], "reward_workers": 1},
        ],
    }  # fmt: skip
    return build_recipe(raw, "test")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("critic")
    reward = tmp / "reward.py"
    reward.write_text(REWARD)
    out = tmp / "full"
    Pipeline(recipe(out, reward)).run()
    return {"dir": out, "reward": reward}


def stage(out: Path) -> Path:
    return out / "stage-1-trace"


def stopped_after_step_2(run: dict, tmp_path: Path) -> Path:
    """The reference run as a run killed after its step-2 save (nothing later kept)."""
    out = tmp_path / "run"
    shutil.copytree(run["dir"], out)
    (out / "run_state.json").unlink()
    for name in ("checkpoint", "state/step_4"):
        shutil.rmtree(stage(out) / name)
    metrics = stage(out) / "metrics.jsonl"  # killed in step 4: step 3's line (not saved) is left behind
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:3]))
    return out


def without_timing(rows: list[dict]) -> list[dict]:
    timing = ("perf/", "reward/time_s")
    return [{k: v for k, v in row.items() if not k.startswith(timing)} for row in rows]


def test_critic_state_is_saved_beside_the_actors(run):
    for step in (2, 4):
        state = stage(run["dir"]) / "state" / f"step_{step}"
        assert (state / "critic.json").is_file() and (state / "critic.safetensors").is_file()
        tree = load_tree(state, "critic")
        assert tree["updates"] == step  # one critic update per RL step
        assert all(len(s) == 3 for s in tree["optimizer"]["state"].values())  # AdamW: step, exp_avg, exp_avg_sq
    rows = read_metrics(stage(run["dir"]) / "metrics.jsonl")
    assert len(rows) == STEPS and all(r["critic/loss"] > 0 for r in rows)  # the critic had something to fit
    head = [
        load_tree(stage(run["dir"]) / "state" / f"step_{s}", "critic")["model"]["value_head.weight"] for s in (2, 4)
    ]
    assert (head[0] != 0).any() and (head[0] != head[1]).any()  # it trained, and kept training after step 2


def test_resumed_run_continues_the_critic_bit_exactly(run, tmp_path, capsys):
    out = stopped_after_step_2(run, tmp_path)
    Pipeline.resume(out).run()
    assert "resumed stage-1-trace at step 2" in capsys.readouterr().out
    full, resumed = read_metrics(stage(run["dir"]) / "metrics.jsonl"), read_metrics(stage(out) / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    # critic/loss, critic/value_loss, critic/return_mean (from the critic's values) and the policy's
    # metrics of steps 3-4: a restarted critic (values 0 again) changes every one of them
    assert without_timing(resumed) == without_timing(full)
    a, b = (load_file(stage(d) / "checkpoint" / "model.safetensors") for d in (run["dir"], out))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    a, b = (load_tree(stage(d) / "state" / "step_4", "critic") for d in (run["dir"], out))
    assert a["updates"] == b["updates"] == STEPS
    assert all(a["model"][k].equal(b["model"][k]) for k in a["model"])
    for i, moments in a["optimizer"]["state"].items():
        assert all(v.equal(b["optimizer"]["state"][i][k]) for k, v in moments.items())


@pytest.mark.parametrize("damage", ["missing", "pickled"])
def test_state_without_the_critics_files_is_refused_before_ray(run, tmp_path, damage):
    out = stopped_after_step_2(run, tmp_path)
    state = stage(out) / "state" / "step_2"
    for name in ("critic.json", "critic.safetensors"):
        (state / name).unlink()
    if damage == "pickled":
        (state / "critic.pt").write_bytes(b"\x80\x04K\x01.")
        message = r"critic\.pt: a pickled training-state file"
    else:
        message = r"critic\.json: missing; this stage trains a critic and the training state in .*step_2 lacks"
    with pytest.raises(StateFileError, match=message):
        Pipeline.resume(out).run()
    assert len(read_metrics(stage(out) / "metrics.jsonl")) == 3  # refused before anything ran
