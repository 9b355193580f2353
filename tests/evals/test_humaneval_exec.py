"""HumanEval's execution scorer: a correct completion passes, a wrong one fails, a hanging one is
killed by the sandbox's limits instead of stalling the evaluation, and a completion that exits
early or fakes its output does not pass (the check runs in the sandbox's verdict process)."""

import json
import time

import pytest

from dare.evals.datasets import HumanEvalExecEvaluator, passes_tests
from dare.rewards import sandbox as sb

PROBLEM = {
    "task_id": "t/0",
    "prompt": 'def add(a, b):\n    """Sum of a and b."""\n',
    "test": "import math\n\ndef check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n    assert math.isclose(f(0.5, 0.25), 0.75)\n",
    "entry_point": "add",
}
needs_namespaces = pytest.mark.skipif(not sb.namespaces_available(), reason="no namespace isolation here")


def test_completions_are_scored_by_running_their_tests():
    right, wrong, hang = "    return a + b\n", "    return a - b\n", "    while True:\n        pass\n"
    assert passes_tests(right, PROBLEM, timeout=5.0)
    assert not passes_tests(wrong, PROBLEM, timeout=5.0)
    t0 = time.perf_counter()
    assert not passes_tests(hang, PROBLEM, timeout=1.0)
    assert time.perf_counter() - t0 < 10
    fenced = "```python\ndef add(a, b):\n    return b + a\n```"  # a full definition in a code block
    res = HumanEvalExecEvaluator(timeout=5.0).score([right, wrong, fenced], [json.dumps(PROBLEM)] * 3)
    assert [d["correct"] for d in res["details"]] == [True, False, True]
    assert abs(res["humaneval_pass@1"] - 200 / 3) < 1e-9


@needs_namespaces
@pytest.mark.parametrize(
    "forgery",
    [
        "    import os\n    os._exit(0)\nimport os\nos._exit(0)\n",  # exit 0 before the check runs
        "    return a - b\nimport sys\nprint('all tests passed')\nsys.exit(0)\n",
        "    class A:\n        def __eq__(self, o):\n            return True\n    return A()\n",
        "    return a - b\nimport builtins\nbuiltins.AssertionError = KeyboardInterrupt\n",
    ],
    ids=["os_exit", "sys_exit_with_fake_output", "always_equal", "patched_assertion"],
)
def test_a_forged_completion_does_not_pass(forgery):
    assert not passes_tests(forgery, PROBLEM, timeout=5.0)
