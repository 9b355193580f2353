"""Reward functions for RL stages: built-ins, user plug-ins, weighted combinations, and a
fault-tolerant parallel runner.

Interface (see `base.py`): `fn(prompt, response, ground_truth=None, **extra) -> float | dict`
(a dict carries `score` and optionally `acc`, `pred` and numeric flags); batched rewards take
lists (`@batched`). Data-row fields reach a reward only as the keyword arguments it accepts, or
only those it declares with `@row_fields(...)` (every built-in declares; its other arguments are
recipe-only settings: a data column cannot loosen the code sandbox or redirect the judge). A recipe names a reward by registry name or `path/to/file.py:function`:

    rewards:
      - {name: countdown, weight: 1.0}
      - {name: format, weight: 0.1, args: {tags: [think, answer]}}
      - {path: examples/custom_reward/my_reward.py:length_penalty, weight: 0.5, args: {max_chars: 64}}

Built-ins: `countdown`, `sudoku`, `addition`, `sort` (the built-in tasks' verifiers), `task` (the
row's own built-in task), `math` (`<answer>` / `\\boxed{}` / `####` answers, equivalence by
math-verify), `gsm8k` (final number, numeric comparison), `multiple_choice` (option letter),
`exact_match`, `format` (tag structure), d1's GSM8K format rewards `xml_count`, `soft_format`,
`strict_format`, `int_answer`, `code` (tests run in a sandbox), `judge` (an OpenAI-compatible LLM
endpoint, e.g. a vLLM server). The same verifiers score the after-stage check: `scorers.py`.
These are `text` rewards; the `differentiable` ones a DRAKES stage backpropagates through
(`task_match`, `linear`, `reward_model`: `differentiable/`) share the one registry `REWARDS`, each
entry carrying its kind (`register_reward(name, kind=...)`, `builtin_reward(name, kind)`).

    from dare.rewards import RewardRunner
    with RewardRunner(specs, num_workers=2, timeout_s=30) as runner:
        scores, metrics, components = runner.score(prompts, responses, ground_truths, extras)
"""

# register the built-ins of both kinds (text; differentiable), so a lookup knows every name's kind
from dare.rewards import answers, code_exec, d1_format, differentiable, judge, math_answer, tag_format, tasks  # noqa: F401
from dare.rewards.base import (
    REWARD_KINDS,
    REWARDS,
    RewardFn,
    RewardLoadError,
    RewardValue,
    batched,
    builtin_reward,
    is_batched,
    load_plugin,
    normalize_output,
    register_reward,
    resolve_reward,
    row_fields,
)
from dare.rewards.runner import RewardRunner
from dare.rewards.sandbox import SandboxLimits, SandboxResult, run_program, run_tests
from dare.rewards.spec import CombinedReward, RewardSpec, as_spec, as_specs


def get_reward(name: str) -> RewardFn:
    """A built-in reward by name, or a plug-in by `path/to/file.py:function`."""
    return resolve_reward(name)


__all__ = [
    "REWARDS",
    "REWARD_KINDS",
    "CombinedReward",
    "RewardFn",
    "RewardLoadError",
    "RewardRunner",
    "RewardSpec",
    "RewardValue",
    "SandboxLimits",
    "SandboxResult",
    "as_spec",
    "as_specs",
    "batched",
    "builtin_reward",
    "row_fields",
    "get_reward",
    "is_batched",
    "load_plugin",
    "normalize_output",
    "register_reward",
    "resolve_reward",
    "run_program",
    "run_tests",
]
