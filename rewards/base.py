"""The reward interface, the reward registry and plug-in loading.

A reward is a plain function

    fn(prompt: str, response: str, ground_truth=None, **extra) -> float | dict

returning a score, or a dict with a numeric `score` plus optional extras: `acc` (accuracy for
evaluation), `pred` (the parsed prediction, for logs) and any other numeric flags (e.g.
`parse_error`), which the runner averages into `reward/<label>/<key>` metrics. Keyword arguments
the function declares are filled from the recipe's `args` and from the sample's extra fields
(spec args win); extra fields the function does not declare are not passed (unless it takes
`**kwargs`).

A *batched* reward takes lists instead and returns one value per sample:

    fn(prompts: list[str], responses: list[str], ground_truths: list | None = None, **extra)
        -> list[float | dict]

(extra fields arrive as lists too). Declare it with `register_reward(name, batched=True)` or, in a
user file, with the `@batched` decorator (it sets `fn.batched = True`).

A recipe names a reward by its registry name (`countdown`, `math`, `code`, ...) or, for a user
plug-in, by `path/to/file.py:function` (a path relative to the working directory). Plug-ins are
loaded and their signature is checked against the recipe's `args` when the recipe loads, and
every error names the file.

One registry, `REWARDS`, holds the built-ins of both kinds of reward (`REWARD_KINDS`): `text`
rewards (above: an RL stage's `rewards`) and `differentiable` ones (a factory `factory(**args)`
returning `fn(token_probs [B, L, V]) -> [B]`: a DRAKES stage's `reward`,
`dare.rewards.differentiable`). Each entry carries its kind (`register_reward(name, kind=...)`);
`builtin_reward(name, kind)` looks one up and names the reward and both kinds when a recipe gives
a reward of the other kind.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import json
import math
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dare.registry import Registry

RewardValue = float | dict[str, Any]
RewardFn = Callable[..., Any]

# every built-in reward, of either kind (its `reward_kind` attribute, set by `register_reward`)
REWARDS: Registry[RewardFn] = Registry("reward")
# kind -> what a reward of that kind is and where a recipe uses it (for error messages)
REWARD_KINDS: dict[str, str] = {
    "text": "fn(prompt, response, ground_truth=None, **args) -> score, an RL stage's `rewards`",
    "differentiable": "factory(**args) -> fn(token_probs [B, L, V]) -> [B], a DRAKES stage's `reward`",
}
# how an unknown name of each kind is reported ("unknown reward 'x'; known: ...")
_KIND_LABELS = {"text": "reward", "differentiable": "differentiable reward"}

# the arguments every reward is called with (the third by keyword); extra fields with these names
# are never passed on
CALL_ARGS = ("prompt", "response", "ground_truth")
BATCH_CALL_ARGS = ("prompts", "responses", "ground_truths")


class RewardLoadError(ValueError):
    """A reward reference cannot be resolved: unknown name, missing file or function, a file that
    fails to import, or a signature that does not fit the reward interface or the given args."""


def batched(fn: RewardFn) -> RewardFn:
    """Mark `fn` as a batched reward (lists in, one value per sample out)."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def is_batched(fn: RewardFn) -> bool:
    """Whether `fn` was declared batched (`@batched` or `register_reward(..., batched=True)`)."""
    return getattr(fn, "batched", False) is True


def row_fields(*names: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: the data-row fields (columns beyond prompt / response / ground truth) `fn`
    reads; only these reach it. A reward's other keyword arguments are then settings that only the
    recipe's `args` set: a data row with a column named like one (`isolation`, `cpu_s`,
    `base_url`) cannot loosen the code sandbox or redirect the judge. A plug-in without the
    declaration receives every row field its signature accepts."""

    def _mark(fn: RewardFn) -> RewardFn:
        fn.row_fields = frozenset(names)  # type: ignore[attr-defined]
        return fn

    return _mark


def register_reward(
    name: str, *, kind: str = "text", batched: bool = False, reads: tuple[str, ...] = ()
) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register `fn` as the built-in reward `name` of `kind` (`REWARD_KINDS`; a
    duplicate name raises, whatever its kind). `reads` names the data-row fields a text reward
    takes (see `row_fields`); a built-in gets no other row field (a differentiable one none).

    Raises:
        ValueError: an unknown kind, or `batched` / `reads` on a differentiable reward.
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"reward {name!r}: kind must be one of {sorted(REWARD_KINDS)}, got {kind!r}")
    if kind != "text" and (batched or reads):
        raise ValueError(f"reward {name!r}: batched and reads are settings of text rewards, not {kind} ones")

    def _add(fn: RewardFn) -> RewardFn:
        fn.reward_kind = kind  # type: ignore[attr-defined]
        if batched:
            fn.batched = True  # type: ignore[attr-defined]
        row_fields(*reads)(fn)
        REWARDS.register(name, fn)
        return fn

    return _add


def reward_kind(fn: RewardFn) -> str:
    """The kind `fn` was registered with (`register_reward`)."""
    return getattr(fn, "reward_kind", "text")


def reward_names(kind: str) -> list[str]:
    """The built-in rewards of `kind`, sorted."""
    return [name for name, fn in REWARDS.items() if reward_kind(fn) == kind]


def builtin_reward(name: str, kind: str = "text") -> RewardFn:
    """The built-in reward `name`, which must be of `kind`.

    Raises:
        RewardLoadError: an unknown name (lists the rewards of `kind`, suggests the closest) or a
            reward of the other kind (names it, its kind and the kind expected here).
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"kind must be one of {sorted(REWARD_KINDS)}, got {kind!r}")
    if name not in REWARDS:
        known = reward_names(kind)
        msg = f"unknown {_KIND_LABELS[kind]} {name!r}; known: {', '.join(known) or '(none)'}"
        close = difflib.get_close_matches(name, known, n=1)
        raise RewardLoadError(msg + (f" (did you mean {close[0]!r}?)" if close else ""))
    fn = REWARDS.get(name)
    if reward_kind(fn) != kind:
        raise RewardLoadError(
            f"reward {name!r} is a {reward_kind(fn)} reward ({REWARD_KINDS[reward_kind(fn)]}); a {kind} reward "
            f"({REWARD_KINDS[kind]}) is expected here: {', '.join(reward_names(kind))}"
        )
    return fn


def is_plugin_ref(ref: str) -> bool:
    """`path/to/file.py:function` (as opposed to a registry name)."""
    path, sep, func = ref.rpartition(":")
    return bool(sep) and path.endswith(".py") and bool(func)


_PLUGIN_LOCK = threading.Lock()
_PLUGIN_MODULES: dict[str, Any] = {}
# Import a plug-in in a throw-away process first (see `_trial_import`); the reward workers turn it
# off (a worker that dies at import is already reported as a dead worker).
TRIAL_IMPORT = True
TRIAL_IMPORT_TIMEOUT_S = 120.0

_TRIAL = """
import importlib.util, json, sys
path, marker, nonce = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:] = json.loads(sys.argv[4])
spec = importlib.util.spec_from_file_location("dare_reward_plugin_trial", path)
try:
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
finally:
    # reached when the import returns or raises, not when it ends the process
    with open(marker, "w") as f:
        f.write(nonce)
"""


def _trial_import(path: Path) -> None:
    """Import `path` in a child process first: a file that ends its process at import
    (`os._exit`, `sys.exit` in a thread, a signal) would otherwise end the caller (e.g. `dare run`,
    silently, with its exit code). An import error is left to the real import, which reports it.

    Raises:
        RewardLoadError: the child ended before its import returned or raised.
    """
    nonce = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="dare-plugin-trial-") as tmp:
        marker = Path(tmp) / "done"
        cmd = [sys.executable, "-c", _TRIAL, str(path), str(marker), nonce, json.dumps(sys.path)]
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=TRIAL_IMPORT_TIMEOUT_S,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return  # a slow import: the real one decides
        finished = marker.is_file() and marker.read_text() == nonce
    if not finished:
        code = proc.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise RewardLoadError(
            f"{path}: importing it ended the process (it {how} before the import finished); a reward "
            "file must not exit or kill its process at import (os._exit, sys.exit in a thread, signals)"
        )


def _import_file(path: Path) -> Any:
    """Import a user file once per process (by absolute path) as a uniquely named module."""
    key = str(path.resolve())
    with _PLUGIN_LOCK:
        if key in _PLUGIN_MODULES:
            return _PLUGIN_MODULES[key]
        if TRIAL_IMPORT:
            _trial_import(Path(key))
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        name = f"dare_reward_plugin_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, key)
        if spec is None or spec.loader is None:
            raise RewardLoadError(f"{path}: cannot be imported as a Python file")
        module = importlib.util.module_from_spec(spec)
        # registered before exec so that dataclasses / pickling inside the file can find it
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as e:
            del sys.modules[name]
            raise RewardLoadError(f"{path}: failed to import: {type(e).__name__}: {e}") from e
        _PLUGIN_MODULES[key] = module
        return module


def load_plugin(ref: str) -> RewardFn:
    """The function named by `path/to/file.py:function`.

    Raises:
        RewardLoadError: malformed reference, missing file, import failure, missing function or
            not callable; the message names the file.
    """
    path_text, _, func_name = ref.rpartition(":")
    if not is_plugin_ref(ref):
        raise RewardLoadError(f"{ref!r}: a reward plug-in must look like path/to/file.py:function")
    path = Path(path_text)
    if not path.is_file():
        raise RewardLoadError(f"{path}: reward file not found (from {ref!r}; relative to {Path.cwd()})")
    module = _import_file(path)
    fn = getattr(module, func_name, None)
    if fn is None:
        defined = sorted(
            n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__
        )
        raise RewardLoadError(
            f"{path}: has no function {func_name!r}; functions defined there: {', '.join(defined) or '(none)'}"
        )
    if not callable(fn):
        raise RewardLoadError(f"{path}: {func_name!r} is a {type(fn).__name__}, not a function")
    return fn


def resolve_reward(ref: str) -> RewardFn:
    """A built-in text reward by name, or a plug-in by `path/to/file.py:function`.

    Raises:
        RewardLoadError: unknown name (lists the known ones), a differentiable reward's name, or a
            bad plug-in reference.
    """
    if is_plugin_ref(ref):
        return load_plugin(ref)
    if ref.endswith(".py") or "/" in ref:
        raise RewardLoadError(f"{ref!r}: a reward plug-in must look like path/to/file.py:function")
    return builtin_reward(ref, "text")


def check_signature(fn: RewardFn, args: Mapping[str, Any], where: str) -> None:
    """Check that `fn(prompt, response, ground_truth=..., **args)` (batched:
    `fn(prompts, responses, ground_truths=..., **args)`) is a valid call.

    Raises:
        RewardLoadError: naming `where` (the file or the reward name), the signature and the
            reason.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check
    gt = "ground_truths" if is_batched(fn) else "ground_truth"
    try:
        sig.bind("prompt", "response", **{gt: None}, **dict(args))
    except TypeError as e:
        first = "fn(prompts, responses" if is_batched(fn) else "fn(prompt, response"
        raise RewardLoadError(
            f"{where}: signature {getattr(fn, '__name__', 'fn')}{sig} does not fit the reward call "
            f"{first}, {gt}=None, **args) with args {sorted(args)}: {e}"
        ) from None


def accepted_extra(fn: RewardFn) -> frozenset[str] | None:
    """The data-row fields passed to `fn`: those it declares (`row_fields`; every built-in does),
    else the keyword arguments it accepts beyond the call args, or None if it takes `**kwargs`
    (it accepts every extra field)."""
    declared = getattr(fn, "row_fields", None)
    if isinstance(declared, frozenset):
        return frozenset(declared - set(CALL_ARGS) - set(BATCH_CALL_ARGS))
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = set()
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    return frozenset(names - set(CALL_ARGS) - set(BATCH_CALL_ARGS))


def _passed(key: str, accepted: frozenset[str] | None) -> bool:
    return key not in CALL_ARGS and key not in BATCH_CALL_ARGS and (accepted is None or key in accepted)


def normalize_output(value: Any) -> tuple[float, dict[str, Any]]:
    """`(score, info)` from a reward's return value.

    A number (bool included) is the score. A dict must hold a numeric `score`; its other entries
    are the info. Raises ValueError (a reward error) for anything else or a non-finite score.
    """
    info: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if "score" not in value:
            raise ValueError(f"a reward dict must have a 'score' key, got keys {sorted(value)}")
        info = {k: v for k, v in value.items() if k != "score"}
        value = value["score"]
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) and not (hasattr(value, "item") and callable(value.item)):
        raise ValueError(f"a reward must return a number or a dict with 'score', got {type(value).__name__}")
    score = float(value.item() if hasattr(value, "item") else value)
    if not math.isfinite(score):
        raise ValueError(f"reward score is not finite: {score}")
    return score, info


def call_reward(
    fn: RewardFn,
    args: Mapping[str, Any],
    prompt: str,
    response: str,
    ground_truth: Any = None,
    extra: Mapping[str, Any] | None = None,
    accepted: frozenset[str] | None = None,
) -> tuple[float, dict[str, Any]]:
    """Call a per-sample reward with `args` and the sample's `extra` fields (filtered to what it
    accepts; `accepted=None` means all) and normalise the result. Exceptions propagate."""
    kwargs = {k: v for k, v in (extra or {}).items() if _passed(k, accepted)}
    kwargs.update(args)
    return normalize_output(fn(prompt, response, ground_truth=ground_truth, **kwargs))


def call_batched_reward(
    fn: RewardFn,
    args: Mapping[str, Any],
    prompts: list[str],
    responses: list[str],
    ground_truths: list[Any] | None = None,
    extras: list[Mapping[str, Any]] | None = None,
    accepted: frozenset[str] | None = None,
) -> list[tuple[float, dict[str, Any]]]:
    """Call a batched reward (extra fields as columns) and normalise each of its values."""
    columns: dict[str, list[Any]] = {}
    if extras:
        keys = sorted({k for e in extras for k in e if _passed(k, accepted)})
        columns = {k: [e.get(k) for e in extras] for k in keys}
    columns.update(args)
    out = fn(prompts, responses, ground_truths=ground_truths, **columns)
    if not isinstance(out, (list, tuple)) or len(out) != len(prompts):
        got = f"{type(out).__name__} of length {len(out)}" if isinstance(out, (list, tuple)) else type(out).__name__
        raise ValueError(f"a batched reward must return a list of {len(prompts)} values, got {got}")
    return [normalize_output(v) for v in out]


__all__ = [
    "BATCH_CALL_ARGS",
    "CALL_ARGS",
    "REWARDS",
    "REWARD_KINDS",
    "RewardFn",
    "RewardLoadError",
    "RewardValue",
    "accepted_extra",
    "batched",
    "builtin_reward",
    "call_batched_reward",
    "call_reward",
    "check_signature",
    "is_batched",
    "is_plugin_ref",
    "load_plugin",
    "normalize_output",
    "register_reward",
    "resolve_reward",
    "reward_kind",
    "reward_names",
    "row_fields",
]
