"""Fault suite (issue 17), rewards: one case per attack or fault.

- code sandbox escapes: a response that tries to forge a pass (patched builtins, a hunted nonce,
  an early exit, objects that equal anything, a fake verdict, a killed verdict process, ...) scores
  0 where the honest program scores 1, and one that reads host files or processes sees nothing;
- reward values: NaN, infinite, huge (1e300 is inf in float32) or out-of-bounds scores are errors
  scored 0; bad `bounds` are refused at recipe load;
- plug-in processes: children forked by a reward die with the call, also after a timeout; a flood
  of output is capped; `os._exit` at import is refused at load naming the file, during a call it
  is a counted error; distinct tracebacks are all reported.

The sandbox cases need Linux namespaces (CI runs as root, where they work); they are skipped with
the probe's reason elsewhere.
"""

from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path

import pytest

from dare.config.loader import RecipeError, convert
from dare.rewards import RewardLoadError, RewardRunner, RewardSpec
from dare.rewards import sandbox as sb
from dare.rewards.sandbox import SandboxLimits, run_tests

LIMITS = SandboxLimits(cpu_s=2, wall_s=6, memory_mb=256, max_processes=16, max_output_mb=1)
TESTS = ["assert f(2) == 4", "assert f(3) == 6", "assert f(-1) == -2"]
HONEST = "def f(x):\n    return 2 * x\n"
# appears only in the tests' own text: a program that finds the tests would print it
SECRET_TEST = "assert f(10) == 20  # 7c1e-secret-test"

needs_namespaces = pytest.mark.skipif(
    not sb.namespaces_available(), reason=f"no namespace isolation here: {sb._probe_result}"
)

# each: a program that tries to pass the tests without computing f (or to escape); `wrong` f
ESCAPES = {
    "builtins_exec_patched": "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n",
    "assertion_error_patched": "import builtins\nclass E(Exception):\n    pass\nbuiltins.AssertionError = E\n",
    "nonce_hunted_in_frames": """
import gc, inspect, os, sys
found = [o for o in gc.get_objects() if isinstance(o, dict) and any(isinstance(v, str) and "assert" in v for v in o.values())]
frames = [repr(fr.f_globals.get("config"))[:300] for fr in [sys._getframe(0)] + [i.frame for i in inspect.stack()]]
print("FOUND", found, frames)
for fd in range(3, 30):
    try:
        print("FD", fd, os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
for fd in range(3, 30):
    for line in ("0 1", "1 1", "2 1", "3 1", "done"):
        try:
            os.write(fd, (line + "\\n").encode())
        except OSError:
            pass
""",
    "exit_before_asserts": "import os\ndef f(x):\n    return 2 * x\nos._exit(0)\n",
    "sys_exit_in_call": "def f(x):\n    raise SystemExit(0)\n",
    "always_equal_object": "class A:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return A()\n",
    "int_subclass": "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\ndef f(x):\n    return I(0)\n",
    "kill_parent_and_peers": """
import os, signal
for pid in [os.getppid(), 1] + list(range(2, 64)):
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
            print("killed", pid)
        except OSError:
            pass
""",
    "fake_verdict_on_stdout": "for i in range(5):\n    print(f'{i} 1')\nprint('done')\nimport sys\nsys.stdout.flush()\n",
    "garbage_on_the_socket": "import os\nfor fd in range(3, 30):\n    try:\n        os.write(fd, b'\\x00\\x00\\x00\\x05[\"ok\"' * 10)\n    except OSError:\n        pass\n",
    "forked_twin_answers": "import os\nos.fork()\ndef f(x):\n    return 0\n",
    "harness_module_patched": """
import sys
main = sys.modules["__main__"]
for name in dir(main):
    obj = getattr(main, name)
    if callable(obj) and not isinstance(obj, type):
        try:
            setattr(main, name, lambda *a, **k: None)
        except Exception:
            pass
""",
    "ptrace_and_proc_mem": """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for pid in range(1, 16):
    print(pid, libc.ptrace(16, pid, 0, 0), ctypes.get_errno())  # PTRACE_ATTACH
    try:
        print(open(f"/proc/{pid}/mem", "rb").read(1))
    except OSError as e:
        print("mem", pid, e.errno)
""",
    "shadowed_builtin": "def len(x):\n    return 3\ndef f(x):\n    return 0\n",
}


@needs_namespaces
def test_honest_program_passes_and_a_wrong_one_fails():
    """The baseline of the escape cases: they could score 1."""
    passed, _ = run_tests(HONEST, TESTS + [SECRET_TEST], LIMITS)
    assert passed == [True] * 4
    passed, _ = run_tests("def f(x):\n    return x\n", TESTS, LIMITS)
    assert passed == [False, False, False]


@needs_namespaces
@pytest.mark.parametrize("attack", sorted(ESCAPES))
def test_sandbox_escape_scores_zero(attack):
    tests = TESTS + [SECRET_TEST]
    if attack == "shadowed_builtin":
        tests = ["assert len(f(1)) == 3"]  # the program's len must not reach the test
    start = time.monotonic()
    passed, res = run_tests(ESCAPES[attack], tests, LIMITS)
    assert not any(passed), (attack, passed, res.stdout[-500:], res.stderr[-500:])
    assert "7c1e-secret-test" not in res.stdout + res.stderr  # the tests never reach the program
    assert time.monotonic() - start < LIMITS.wall_s + 5


@needs_namespaces
def test_host_files_are_hidden():
    here = Path(__file__).resolve()
    code = f"""
import os
print("ROOT", sorted(os.listdir("/root")) if os.path.isdir("/root") else None)
for path in ["/etc/shadow", {str(here)!r}, "/root/.bash_history"]:
    try:
        print("READ", path, open(path).read()[:2000])
    except OSError as e:
        print("DENIED", path, e.errno)
print("HOME", os.listdir({str(here.parents[2])!r}) if os.path.isdir({str(here.parents[2])!r}) else None)
"""
    res = sb.run_program(code, "", LIMITS)
    assert res.ok, res.stderr
    assert "7c1e-secret-test" not in res.stdout  # this file's text
    assert "READ /etc/shadow" not in res.stdout and "READ /root/.bash_history" not in res.stdout
    root = eval(res.stdout.split("ROOT ", 1)[1].splitlines()[0])  # noqa: S307 (our own print)
    # only the way to the interpreter, if it lives under /root
    assert root in (None, []) or all(sb._python().startswith(f"/root/{d}") for d in root), root
    assert "HOME []" in res.stdout or "HOME None" in res.stdout, res.stdout


@needs_namespaces
def test_host_processes_are_invisible_and_no_capability_is_left():
    code = """
import os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("PIDS", pids)
print("CMDLINES", [open(f"/proc/{p}/cmdline", "rb").read() for p in pids if os.access(f"/proc/{p}/cmdline", os.R_OK)])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("CAPS", [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb")])
print("NNP", status["NoNewPrivs"].strip(), "UID", os.getuid())
"""
    res = sb.run_program(code, "", LIMITS)
    assert res.ok, res.stderr
    pids = eval(res.stdout.split("PIDS ", 1)[1].splitlines()[0])  # noqa: S307
    assert len(pids) < 6, pids  # the sandbox's own: supervisor and program
    assert b"pytest" not in res.stdout.encode()
    assert res.stdout.split("CAPS ", 1)[1].splitlines()[0] == str(["0000000000000000"] * 5)
    assert "NNP 1" in res.stdout


# -- reward values ---------------------------------------------------------------------------

VALUES = """
def value(prompt, response, ground_truth=None):
    return {"huge": 1e300, "inf": float("inf"), "-inf": float("-inf"), "nan": float("nan"),
            "big": 2e4, "dict_huge": {"score": -1e300}, "ok": 1.0, "half": 0.5}[response]
"""


@pytest.mark.parametrize(
    ("response", "bounds", "score"),
    [
        ("huge", None, 0.0),
        ("inf", None, 0.0),
        ("-inf", None, 0.0),
        ("nan", None, 0.0),
        ("big", None, 0.0),  # over the default bound 1e4
        ("dict_huge", None, 0.0),
        ("half", [0, 0.4], 0.0),  # over a per-spec bound
        ("ok", [0, 1], 1.0),
    ],
)
def test_non_finite_or_out_of_bounds_reward_is_an_error(tmp_path, response, bounds, score):
    plug = tmp_path / "value.py"
    plug.write_text(VALUES)
    spec = {"path": f"{plug}:value", "weight": 2.0, **({"bounds": bounds} if bounds else {})}
    runner = RewardRunner([spec, {"name": "sort", "weight": 0.0}], num_workers=0)
    scores, metrics, comp = runner.score(["p"], [response])
    assert comp["value"] == [score] and scores == [2 * score]
    assert metrics["reward/errors"] == (0 if score else 1)
    if not score:
        assert "outside its bounds" in runner.first_error or "not finite" in runner.first_error


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([1, 0], "low must be < high"),
        ([0, float("inf")], "must be a finite number, got inf"),
        ([0], "two finite numbers"),
    ],
)
def test_bad_bounds_are_refused_at_recipe_load(bounds, message):
    with pytest.raises(RecipeError) as e:
        convert(list[RewardSpec], [{"name": "sort", "bounds": bounds}], "stages[0].rewards", "r.yaml")
    assert "stages[0].rewards[0].bounds" in str(e.value) and message in str(e.value)


# -- plug-in processes -------------------------------------------------------------------------

PLUGIN = '''
import os, subprocess, sys, time

def forks(prompt, response, ground_truth=None, pid_file=None):
    """Leaves a child in its own session and a double-forked daemon behind."""
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pid_file + ".tmp", pid_file + ".daemon")
            time.sleep(600)
        os._exit(0)
    while not os.path.exists(pid_file + ".daemon"):
        time.sleep(0.01)
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    if response == "hang":
        time.sleep(600)
    return 1.0

def floods(prompt, response, ground_truth=None):
    chunk = "x" * (1 << 20)
    for _ in range(40):
        sys.stdout.write(chunk)
        sys.stderr.write(chunk)
    return 1.0

def exits(prompt, response, ground_truth=None):
    if response == "exit":
        os._exit(0)
    return 1.0

def raises(prompt, response, ground_truth=None):
    if response == "key":
        return {}["missing"]
    if response == "zero":
        return 1 / 0
    if response == "type":
        return len(5)
    if response == "value":
        raise ValueError("bad value")
    return 1.0
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "plug.py"
    path.write_text(textwrap.dedent(PLUGIN))
    return path


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def read_pids(pid_file: Path) -> list[int]:
    deadline = time.monotonic() + 5
    daemon = Path(str(pid_file) + ".daemon")
    while not (pid_file.exists() and daemon.exists() and daemon.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [int(pid_file.read_text()), int(daemon.read_text())]


@pytest.mark.parametrize("how", ["after_the_call", "after_a_timeout"])
def test_forked_children_do_not_outlive_the_call(plugin, tmp_path, how):
    pid_file = tmp_path / "pids"
    spec = {"path": f"{plugin}:forks", "args": {"pid_file": str(pid_file)}}
    with RewardRunner([spec], num_workers=1, timeout_s=60 if how == "after_the_call" else 3) as runner:
        runner.score(["p"], ["ok"])  # the worker is up (its start is not what is timed)
        scores, metrics, _ = runner.score(["p"], ["ok" if how == "after_the_call" else "hang"])
        pids = read_pids(pid_file)
        if how == "after_the_call":
            assert scores == [1.0] and not [p for p in pids if alive(p)]  # dead when score returns
        else:
            assert metrics["reward/timeouts"] == 1
            deadline = time.monotonic() + 5
            while any(alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [p for p in pids if alive(p)]


def test_output_flood_is_capped(plugin, capsys):
    cap = 4096
    with RewardRunner([f"{plugin}:floods"], num_workers=1, max_output_bytes=cap) as runner:
        start = time.monotonic()
        scores, _, _ = runner.score(["p"], ["r"])
        assert scores == [1.0] and time.monotonic() - start < 30
        deadline = time.monotonic() + 10
        err = ""
        while "the rest is dropped" not in err and time.monotonic() < deadline:
            time.sleep(0.05)
            err += capsys.readouterr().err
    err += capsys.readouterr().err
    assert "the rest is dropped" in err and len(err) < cap + 200, len(err)


def test_exit_at_import_is_refused_at_load(tmp_path):
    plug = tmp_path / "exits_at_import.py"
    plug.write_text("import os\nos._exit(0)\n\ndef f(prompt, response, ground_truth=None):\n    return 1.0\n")
    with pytest.raises(RewardLoadError, match=r"exits_at_import.py: importing it ended the process .*code 0"):
        RewardRunner([f"{plug}:f"], num_workers=1)
    with pytest.raises(RecipeError, match=r"rewards\[0\]: .*exits_at_import.py: importing it ended the process"):
        convert(list[RewardSpec], [{"path": f"{plug}:f"}], "rewards", "r.yaml")


def test_exit_during_a_call_is_a_counted_error(plugin):
    with RewardRunner([f"{plugin}:exits"], num_workers=1, timeout_s=30) as runner:
        scores, metrics, _ = runner.score(["p"] * 3, ["a", "exit", "b"])
        assert scores == [1.0, 0.0, 1.0] and metrics["reward/errors"] == 1
        assert "'exits': worker process died (exit code 0) on sample(s) [1]" in runner.first_error


def test_distinct_tracebacks_are_all_reported(plugin, caplog):
    responses = ["key", "zero", "key", "type", "value", "ok"]
    with (
        caplog.at_level(logging.ERROR, logger="dare.rewards"),
        RewardRunner([f"{plugin}:raises"], num_workers=0, max_tracebacks=3) as runner,
    ):
        scores, metrics, _ = runner.score(["p"] * 6, responses)
    assert scores == [0.0] * 5 + [1.0] and metrics["reward/errors"] == 5
    count, tracebacks = runner.error_summary["raises"]
    assert count == 5 and len(tracebacks) == 3  # key (twice), zero, type; value is over the limit
    for name in ("KeyError", "ZeroDivisionError", "TypeError"):
        assert sum(name in tb for tb in tracebacks) == 1 and name in caplog.text
    assert "3 distinct traceback(s) (at most 3 shown)" in caplog.text


def test_huge_info_values_are_not_metric_columns(tmp_path):
    plug = tmp_path / "info.py"
    plug.write_text(
        "def info(prompt, response, ground_truth=None):\n    return {'score': 1.0, 'acc': 1e300, 'big': 10**400, 'ok': 0.5}\n"
    )
    scores, metrics, comp = RewardRunner([f"{plug}:info"], num_workers=0).score(["p"], ["r"])
    assert scores == [1.0] and comp["info/ok"] == [0.5] and metrics["reward/info/ok"] == 0.5
    assert "info/acc" not in comp and "info/big" not in comp and "reward/info/acc" not in metrics


# --- data rows cannot set a reward's settings ----------------------------------------------------


def test_builtin_rewards_read_only_their_declared_row_fields():
    """A data column named like a reward setting (the sandbox's `isolation` / `cpu_s`, the judge's
    `base_url`, math's `timeout_s`) never reaches a built-in: only the task fields do."""
    from dare.rewards import REWARDS
    from dare.rewards.base import accepted_extra

    for name in REWARDS.names():
        accepted = accepted_extra(REWARDS.get(name))
        assert accepted is not None and accepted <= {"task", "task_args"}, (name, accepted)


@needs_namespaces
def test_a_row_column_does_not_change_the_code_sandbox_settings():
    half = "def f(x):\n    return 2 * x if x > 0 else 0\n"  # passes 2 of the 3 tests
    hostile = {"all_or_nothing": True, "isolation": "none", "cpu_s": 1e9, "memory_mb": 10**6}
    runner = RewardRunner(["code"], num_workers=0)
    scores, _, _ = runner.score(["p", "p"], [half, half], [TESTS, TESTS], [{}, hostile])
    assert scores == pytest.approx([2 / 3, 2 / 3])  # the row's all_or_nothing would make it 0
    strict = RewardRunner([{"name": "code", "args": {"all_or_nothing": True}}], num_workers=0)
    assert strict.score(["p"], [half], [TESTS])[0] == [0.0]  # the recipe's args do set it


def test_a_plugin_declaring_row_fields_gets_only_those(tmp_path):
    plug = tmp_path / "declared.py"
    plug.write_text(
        "from dare.rewards import row_fields\n"
        "@row_fields('difficulty')\n"
        "def graded(prompt, response, ground_truth=None, difficulty=1, limit=10, **rest):\n"
        "    return float(difficulty * 100 + limit + len(rest))\n"
    )
    row = {"difficulty": 2, "limit": 10**9, "other": "x"}
    scores, _, _ = RewardRunner([f"{plug}:graded"], num_workers=0).score(["p"], ["r"], None, [row])
    assert scores == [210.0]  # difficulty from the row; limit stays the default; nothing else passed
