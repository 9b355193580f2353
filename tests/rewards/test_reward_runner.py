"""RewardRunner: raising, hanging and crashing rewards score 0 with the error metrics counted and
no crash; hung workers (and what they started) are killed; weighted combination is exact."""

from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path

import pytest

from dare.rewards import RewardRunner

GT = {"numbers": [3, 8, 1], "target": 24}

PLUGIN = '''
import os, subprocess, time

def flaky(prompt, response, ground_truth=None):
    """Raises on "boom"."""
    if response == "boom":
        raise RuntimeError("kaboom " + prompt)
    return 1.0

def slow(prompt, response, ground_truth=None, pid_file=None):
    """Hangs on "hang", after starting a child process (it must be killed too)."""
    if response == "hang":
        child = subprocess.Popen(["sleep", "600"])
        with open(pid_file, "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        time.sleep(600)
    return 0.5

def crash(prompt, response, ground_truth=None):
    """Kills its own process on "crash"."""
    if response == "crash":
        os._exit(3)
    return 0.25

def bad_value(prompt, response, ground_truth=None):
    return {"nan": float("nan"), "dict": {"acc": 1.0}, "str": "high"}.get(response, 1.0)

def hang_batch(prompts, responses, ground_truths=None):
    if "hang" in responses:
        time.sleep(600)
    return [1.0 for _ in responses]
hang_batch.batched = True
'''


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "plug.py"
    path.write_text(textwrap.dedent(PLUGIN))
    return path


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_dead(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_raising_and_hanging_rewards_score_zero_and_are_counted(plugin, tmp_path, caplog):
    pid_file = tmp_path / "pids"
    specs = [
        {"path": f"{plugin}:flaky", "weight": 1.0},
        {"path": f"{plugin}:slow", "weight": 2.0, "args": {"pid_file": str(pid_file)}},
        {"name": "countdown", "weight": 4.0},
    ]
    responses = ["3*8*1", "boom", "hang", "ok", "boom"]
    with caplog.at_level(logging.WARNING, logger="dare.rewards"), RewardRunner(specs, 2, timeout_s=2) as runner:
        runner.score(["p"] * 2, ["ok"] * 2, [GT] * 2)  # workers started (a loaded machine: ~20 s)
        start = time.monotonic()
        scores, metrics, comp = runner.score(["p"] * 5, responses, [GT] * 5)
        elapsed = time.monotonic() - start
        assert comp["flaky"] == [1.0, 0.0, 1.0, 1.0, 0.0]
        assert comp["slow"] == [0.5, 0.5, 0.0, 0.5, 0.5]
        assert comp["countdown"] == [1.0, 0.0, 0.0, 0.0, 0.0]
        assert scores == [1 + 1 + 4, 0 + 1 + 0, 1 + 0 + 0, 1 + 1 + 0, 0 + 1 + 0]
        assert metrics["reward/errors"] == 2 and metrics["reward/timeouts"] == 1
        assert metrics["reward/mean"] == pytest.approx(sum(scores) / 5)
        assert metrics["reward/flaky/mean"] == pytest.approx(0.6)
        assert elapsed < 2 + 10  # one timeout, not one per remaining sample
        # the first traceback is logged (and kept), naming the reward's own line
        assert runner.first_error is not None and "RuntimeError: kaboom p" in runner.first_error
        assert "kaboom" in caplog.text and "timed out after 2 s on sample(s) [2]" in caplog.text
        # the hung worker and the process it started are killed, not leaked
        worker_pid, child_pid = map(int, pid_file.read_text().split())
        assert not wait_dead([worker_pid, child_pid])
        assert worker_pid not in runner.worker_pids()
        # the runner goes on: the next batch is clean
        scores, metrics, _ = runner.score(["p"], ["3*8*1"], [GT])
        assert scores == [6.0] and metrics["reward/errors"] == 0 and metrics["reward/timeouts"] == 0
        pids = runner.worker_pids()
    assert not wait_dead(pids)  # close() stops every worker


def test_crashing_worker_and_invalid_values_count_as_errors(plugin):
    specs = [{"path": f"{plugin}:crash"}, {"path": f"{plugin}:bad_value"}]
    with RewardRunner(specs, num_workers=1, timeout_s=10, chunk_size=4) as runner:
        scores, metrics, comp = runner.score(["p"] * 6, ["a", "crash", "b", "nan", "dict", "str"])
    assert comp["crash"] == [0.25, 0.0, 0.25, 0.25, 0.25, 0.25]  # the rest of its chunk is re-sent
    assert comp["bad_value"] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # NaN, a dict without score, a str
    assert metrics["reward/errors"] == 4 and metrics["reward/timeouts"] == 0


def test_hanging_batched_reward(plugin):
    specs = [{"path": f"{plugin}:hang_batch"}, {"name": "sort", "weight": 0.5}]
    with RewardRunner(specs, num_workers=2, timeout_s=1.5) as runner:
        scores, metrics, comp = runner.score(["sort 21"] * 3, ["12", "hang", "21"], ["12"] * 3)
        assert comp["hang_batch"] == [0.0, 0.0, 0.0]  # one call for the batch: all of it times out
        assert comp["sort"] == [1.0, 0.0, 0.0]
        assert scores == [0.5, 0.0, 0.0] and metrics["reward/timeouts"] == 3
        scores, metrics, comp = runner.score(["sort 21"] * 2, ["12", "12"], ["12"] * 2)
        assert scores == [1.5, 1.5] and metrics["reward/timeouts"] == 0


def test_weighted_combination_matches_a_direct_computation():
    specs = [
        {"name": "countdown", "weight": 0.7},
        {"name": "format", "weight": -0.2, "args": {"tags": ["answer"]}},
        {"name": "math", "weight": 1.3},
    ]
    responses = ["3*8*1", "<answer>24</answer>", "\\boxed{24}", "24", "3*8*1"]
    gts = [GT, GT, "24", "24", GT]
    expected_components = {
        "countdown": [1.0, 0.0, 0.0, 0.0, 1.0],
        "format": [0.0, 1.0, 0.0, 0.0, 0.0],
        "math": [0.0, 0.0, 1.0, 0.0, 0.0],
    }
    weights = {"countdown": 0.7, "format": -0.2, "math": 1.3}
    expected = [sum(weights[k] * expected_components[k][i] for k in weights) for i in range(5)]
    for workers in (0, 2):
        with RewardRunner(specs, num_workers=workers, timeout_s=30, chunk_size=2) as runner:
            scores, metrics, comp = runner.score(["q"] * 5, responses, gts)
        assert {k: comp[k] for k in weights} == expected_components
        assert scores == pytest.approx(expected)
        assert metrics["reward/math/acc"] == pytest.approx(0.2)
        assert metrics["reward/errors"] == 0


def test_inline_mode_catches_errors(plugin):
    runner = RewardRunner([{"path": f"{plugin}:flaky"}], num_workers=0)
    scores, metrics, _ = runner.score(["p", "p"], ["boom", "fine"])
    assert scores == [0.0, 1.0] and metrics["reward/errors"] == 1


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="batch lengths differ"):
        RewardRunner(["sort"], num_workers=0).score(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        RewardRunner(["sort"], timeout_s=0)
    with RewardRunner(["sort"], num_workers=1) as runner:
        scores, metrics, comp = runner.score([], [])
        assert scores == [] and comp == {"sort": []} and metrics["reward/errors"] == 0
        assert runner.worker_pids() == []  # nothing to do: no worker started


def test_timed_out_code_reward_leaves_no_sandbox_behind():
    """A `code` reward killed by the runner's timeout takes its sandboxed program along."""

    def sandbox_pids() -> list[int]:
        pids = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and b"_sandbox_harness.py" in (p / "cmdline").read_bytes() and alive(int(p.name)):
                    pids.append(int(p.name))
            except OSError:
                pass
        return pids

    before = set(sandbox_pids())
    spec = {"name": "code", "args": {"wall_s": 120, "cpu_s": 120}}
    program = "```python\nimport time\ntime.sleep(120)\n```"
    with RewardRunner([spec], num_workers=1, timeout_s=3) as runner:
        scores, metrics, _ = runner.score(["p", "p"], [program, "```python\nx = 1\n```"], ["assert True"] * 2)
        assert scores == [0.0, 1.0] and metrics["reward/timeouts"] == 1
        assert not wait_dead([p for p in sandbox_pids() if p not in before])
