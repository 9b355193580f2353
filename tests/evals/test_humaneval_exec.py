"""HumanEval's execution scorer: a correct completion passes, a wrong one fails, and a hanging one
is killed by the sandbox's limits instead of stalling the evaluation."""

import json
import time

from dare.evals.datasets import HumanEvalExecEvaluator, completion_program, run_program

PROBLEM = {
    "task_id": "t/0",
    "prompt": 'def add(a, b):\n    """Sum of a and b."""\n',
    "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n",
    "entry_point": "add",
}


def test_completions_are_scored_by_running_their_tests():
    right, wrong, hang = "    return a + b\n", "    return a - b\n", "    while True:\n        pass\n"
    assert run_program(completion_program(right, PROBLEM), timeout=5.0)
    assert not run_program(completion_program(wrong, PROBLEM), timeout=5.0)
    t0 = time.perf_counter()
    assert not run_program(completion_program(hang, PROBLEM), timeout=1.0)
    assert time.perf_counter() - t0 < 10
    fenced = "```python\ndef add(a, b):\n    return b + a\n```"  # a full definition in a code block
    res = HumanEvalExecEvaluator(timeout=5.0).score([right, wrong, fenced], [json.dumps(PROBLEM)] * 3)
    assert [d["correct"] for d in res["details"]] == [True, False, True]
    assert abs(res["humaneval_pass@1"] - 200 / 3) < 1e-9
