"""The `code` reward: run a Python completion against tests in the sandbox (`sandbox.py`: separate
process, CPU / memory / wall-clock / file-size / process-count limits, empty private working
directory, clean environment, no network where Linux namespaces work).

The program is the last fenced code block of the response (```python ... ``` or ``` ... ```),
or the whole response when it has no fence (`require_fence: true` scores that 0).

`ground_truth` (the tests) may be:

    "assert f(2) == 4\\nassert f(0) == 0"           test code run after the program (one test)
    ["assert f(2) == 4", "assert f(0) == 0"]        several tests, run in one process
    {"tests": <either of the above>}
    {"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}   stdin/stdout tests, one process each
    [{"input": "1 2\\n", "output": "3\\n"}, ...]             same, as pairs

Stdout is compared line by line with trailing whitespace and surrounding blank lines ignored.
Assert tests run in a separate verdict process that calls the program's functions over a socket
(data only), so the program cannot forge a pass (patched builtins, `os._exit(0)` before the
asserts, objects equal to anything: see `_sandbox_harness.py` and docs/security.md).

Returns `{"score": fraction of tests passed (or 0/1 with all_or_nothing), "acc": 1.0 if all
passed, "timeout": 1.0 if a run hit a limit}`; no program or no tests score 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dare.rewards.base import register_reward
from dare.rewards.sandbox import Isolation, SandboxLimits, run_program, run_tests

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", flags=re.DOTALL)


def extract_code(response: Any, require_fence: bool = False) -> str | None:
    """The last fenced code block of `response` (Python or unlabelled), else the whole text
    (unless `require_fence`); None if there is no code."""
    if not isinstance(response, str):
        return None
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(response)]
    python = [b for lang, b in blocks if lang in ("", "python", "py", "python3")]
    if python:
        code = python[-1]
    elif blocks or require_fence:
        return None  # only blocks of other languages, or no fence where one is required
    else:
        code = response
    return code if code.strip() else None


def parse_tests(ground_truth: Any) -> tuple[str, list[Any]]:
    """`("assert", [snippet, ...])` or `("stdio", [(input, output), ...])`.

    Raises:
        ValueError: a ground truth of none of the documented shapes.
    """
    gt = ground_truth
    if isinstance(gt, Mapping) and "tests" in gt:
        gt = gt["tests"]
    if isinstance(gt, str):
        return "assert", [gt]
    if isinstance(gt, Mapping) and "inputs" in gt and "outputs" in gt:
        inputs, outputs = list(gt["inputs"]), list(gt["outputs"])
        if len(inputs) != len(outputs):
            raise ValueError(f"code tests: {len(inputs)} inputs but {len(outputs)} outputs")
        return "stdio", [(str(i), str(o)) for i, o in zip(inputs, outputs)]
    if isinstance(gt, list) and gt and all(isinstance(t, str) for t in gt):
        return "assert", list(gt)
    if isinstance(gt, list) and gt and all(isinstance(t, Mapping) and {"input", "output"} <= set(t) for t in gt):
        return "stdio", [(str(t["input"]), str(t["output"])) for t in gt]
    raise ValueError(
        "code tests must be test code, a list of test snippets, {'tests': ...}, "
        f"{{'inputs': [...], 'outputs': [...]}} or [{{'input', 'output'}}, ...]; got {type(gt).__name__}"
    )


def same_output(got: str, want: str) -> bool:
    """Stdout equality up to trailing spaces on each line and leading/trailing blank lines."""
    norm = lambda s: [line.rstrip() for line in s.strip("\n").strip().splitlines()]
    return norm(got) == norm(want)


@register_reward("code")
def code_reward(
    prompt: str,
    response: str,
    ground_truth: Any = None,
    cpu_s: float = 5.0,
    wall_s: float = 10.0,
    memory_mb: int = 512,
    max_processes: int = 32,
    max_output_mb: int = 8,
    all_or_nothing: bool = False,
    require_fence: bool = False,
    isolation: Isolation = "auto",
) -> dict[str, float]:
    """Fraction of the tests the response's program passes (see the module docstring)."""
    code = extract_code(response, require_fence)
    if code is None or ground_truth is None:
        return {"score": 0.0, "acc": 0.0, "timeout": 0.0}
    mode, tests = parse_tests(ground_truth)
    if not tests:
        return {"score": 0.0, "acc": 0.0, "timeout": 0.0}
    limits = SandboxLimits(
        cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb, max_processes=max_processes, max_output_mb=max_output_mb
    )
    timed_out = False
    if mode == "assert":
        passed, res = run_tests(code, tests, limits, isolation)
        # a run killed by a limit (CPU: SIGXCPU/SIGKILL) counts like a wall-clock timeout
        timed_out = res.timed_out or res.signal is not None
    else:
        passed = []
        for stdin, want in tests:
            res = run_program(code, stdin, limits, isolation)
            timed_out |= res.timed_out or res.signal is not None
            passed.append(res.ok and same_output(res.stdout, want))
            if all_or_nothing and not passed[-1]:
                break  # the rest cannot change the score
        passed += [False] * (len(tests) - len(passed))
    n_ok = sum(passed)
    acc = 1.0 if n_ok == len(tests) else 0.0
    score = acc if all_or_nothing else n_ok / len(tests)
    return {"score": score, "acc": acc, "timeout": 1.0 if timed_out else 0.0}


__all__ = ["code_reward", "extract_code", "parse_tests", "same_output"]
