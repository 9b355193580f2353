"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

The optimizer/scheduler state and an algorithm's extra state (e.g. DiDi's discriminator) are
nested dicts / lists / tuples of tensors, numbers, strings, booleans and None. `save_tree` writes
such a tree as `NAME.safetensors` (every tensor, under a path-like key) and `NAME.json` (the tree
with each tensor replaced by a reference to its key). `load_tree` reads them back with nothing but
`json.loads` and `safetensors.torch.load_file`, so a planted or tampered state file can at worst
hold wrong numbers, never run code; every malformed file is refused with a `StateFileError` that
names it. Pickled state files (`NAME.pt`, what dare wrote before) are refused, never opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "dare-state-v1"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")
# JSON markers of the values JSON cannot hold as themselves
_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


class StateFileError(ValueError):
    """A training-state file that is missing, malformed or pickled (the message names it)."""


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor], seen: set[int]) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in seen and t.numel():  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
        return {_TENSOR: key}
    if isinstance(obj, dict):  # keys may be ints (optimizer param ids) or strings (param names)
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"state key {k!r} at {key or '/'}: only str and int keys are saved")
        return {_DICT: [[k, _encode(v, f"{key}/{k}", tensors, seen)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{key}/{i}", tensors, seen) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"state value at {key or '/'} has type {type(obj).__name__}; not saved without pickle")


def save_tree(tree: Any, directory: str | Path, name: str) -> None:
    """Write `tree` as `directory/name.safetensors` + `directory/name.json` (tensors first: the
    JSON, written last, marks a complete pair)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, "", tensors, set())
    save_file(tensors, str(directory / f"{name}.safetensors"))
    tmp = directory / f"{name}.json.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "tree": encoded}))
    os.replace(tmp, directory / f"{name}.json")


def refuse_pickles(directory: str | Path, name: str) -> None:
    """Refuse a pickled `name` state file (dare never loads one: unpickling runs code)."""
    for suffix in PICKLE_SUFFIXES:
        path = Path(directory) / f"{name}{suffix}"
        if path.exists():
            raise StateFileError(
                f"{path}: a pickled training-state file; dare does not load pickles (they can run code). "
                f"dare writes {name}.safetensors + {name}.json; remove {path.name} (a run saved by an older "
                "dare resumes only from a stage's checkpoint)"
            )


def has_tree(directory: str | Path, name: str) -> bool:
    """Whether `name`'s state is in `directory` (either file of the pair, or a pickle to refuse)."""
    d = Path(directory)
    return any((d / f"{name}{s}").exists() for s in (".json", ".safetensors", *PICKLE_SUFFIXES))


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR} and isinstance(obj[_TENSOR], str):
            key = obj[_TENSOR]
            if key not in tensors:
                raise StateFileError(f"{where}: refers to tensor {key!r}, which its .safetensors file lacks")
            return tensors[key]
        if set(obj) == {_TUPLE} and isinstance(obj[_TUPLE], list):
            return tuple(_decode(v, tensors, where) for v in obj[_TUPLE])
        if set(obj) == {_DICT} and isinstance(obj[_DICT], list):
            out = {}
            for item in obj[_DICT]:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                    raise StateFileError(f"{where}: malformed dict entry {str(item)[:80]}")
                out[item[0]] = _decode(item[1], tensors, where)
            return out
        raise StateFileError(f"{where}: unexpected object with keys {sorted(obj)[:5]}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise StateFileError(f"{where}: unexpected value {str(obj)[:80]}")


def _manifest(manifest: Path) -> dict[str, Any]:
    try:
        doc = json.loads(manifest.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFileError(f"{manifest}: not valid JSON ({e}); the training state is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "tree" not in doc:
        raise StateFileError(f"{manifest}: not a dare training-state manifest (expected format {FORMAT!r})")
    return doc


def _pair(directory: Path, name: str) -> tuple[Path, Path]:
    refuse_pickles(directory, name)
    manifest, data = directory / f"{name}.json", directory / f"{name}.safetensors"
    for path in (manifest, data):
        if not path.is_file():
            raise StateFileError(f"{path}: missing; the training state in {directory} is incomplete")
    return manifest, data


def _refs(obj: Any) -> set[str]:
    if isinstance(obj, list):
        return set().union(*map(_refs, obj)) if obj else set()
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return {str(obj[_TENSOR])}
        return _refs(list(obj.values()))
    return set()


def _same_tensors(keys: set[str], refs: set[str], data: Path, manifest: Path) -> None:
    if keys != refs:
        diff = sorted(keys ^ refs)[:3]
        raise StateFileError(f"{data}: its tensors do not match its manifest {manifest.name} ({diff} ...)")


def check_tree(directory: str | Path, name: str) -> None:
    """`load_tree`'s checks without reading tensor data: no pickle, both files, a valid manifest,
    a safetensors header that fits the file and holds exactly the tensors the manifest lists."""
    directory = Path(directory)
    manifest, data = _pair(directory, name)
    refs = _refs(_manifest(manifest)["tree"])
    try:
        with safe_open(str(data), framework="pt") as f:
            keys = set(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise StateFileError(f"{data}: not a valid safetensors file ({e}); the training state is damaged") from None
    _same_tensors(keys, refs, data, manifest)


def load_tree(directory: str | Path, name: str) -> Any:
    """Read what `save_tree(tree, directory, name)` wrote; a pickle, a missing half of the pair, a
    truncated or otherwise malformed file raises `StateFileError` naming the file."""
    directory = Path(directory)
    manifest, data = _pair(directory, name)
    doc = _manifest(manifest)
    try:
        tensors = load_file(str(data))
    except (SafetensorError, OSError, ValueError) as e:
        raise StateFileError(f"{data}: not a valid safetensors file ({e}); the training state is damaged") from None
    _same_tensors(set(tensors), _refs(doc["tree"]), data, manifest)
    return _decode(doc["tree"], tensors, manifest)


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any) -> None:
    """The saved optimizer state (`Optimizer.state_dict()`'s layout) fits `optimizer`: checked
    before loading, because `load_state_dict` takes moments of any shape and one that does not fit
    its parameter would only fail (or broadcast) at the next step.

    Raises:
        ValueError: naming what does not fit (the caller adds the file).
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not (
        isinstance(saved, dict) and isinstance(saved.get("param_groups"), list) and isinstance(saved.get("state"), dict)
    ):
        raise ValueError("its optimizer state needs 'state' and 'param_groups'")
    ids = [i for g in saved["param_groups"] if isinstance(g, dict) for i in g.get("params", [])]
    if len(ids) != len(params):
        raise ValueError(f"its optimizer state holds {len(ids)} parameters, this model has {len(params)}")
    param_of = dict(zip(ids, params))
    for i, moments in saved["state"].items():
        p = param_of.get(i)
        if p is None or not isinstance(moments, dict):
            raise ValueError(f"optimizer state for parameter {i!r}, which its param_groups lack")
        for k, v in moments.items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape:
                raise ValueError(
                    f"optimizer moment {k!r} of parameter {i} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}"
                )


__all__ = [
    "StateFileError",
    "check_optimizer_state",
    "check_tree",
    "has_tree",
    "load_tree",
    "refuse_pickles",
    "save_tree",
]
