"""Typed-dataclass config loading: YAML + dotted command-line overrides -> validated dataclasses.

Every error names the recipe file and the dotted key (`stages[1].lr`) and says what was
expected; unknown keys get a "did you mean". Defaults live only in the dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from dare.errors import RecipeError


def did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, key: str, file: str | Path | None) -> Any:
    """Check `value` against the annotation `tp` (and build nested dataclasses)."""
    origin = typing.get_origin(tp)
    bad = RecipeError(file, key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return build(tp, value, key, file)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise RecipeError(
                file,
                key,
                f"must be one of {list(typing.get_args(tp))}, got {value!r}{did_you_mean(str(value), [str(a) for a in typing.get_args(tp)])}",
            )
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, key, file)
            except RecipeError as e:
                errors.append(e)
        # a single non-None alternative: its own message is the most precise
        if len([a for a in args if a is not type(None)]) == 1:
            raise errors[0]
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp) or (Any,)
        return [convert(item, v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp) or (str, Any)
        return {k: convert(item, v, f"{key}.{k}", file) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")


def build(cls: type, data: dict[str, Any], key: str, file: str | Path | None) -> Any:
    """Build dataclass `cls` from `data`: unknown keys and missing required keys are errors; the
    instance's `validate(key, file)` (if any) then checks values and combinations."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in fields:
            raise RecipeError(
                file, f"{prefix}{name}", f"unknown key{did_you_mean(name, list(fields))}; known: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], f"{prefix}{name}", file)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(file, f"{prefix}{name}", "is required")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key, file)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree back to plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_override(data: dict[str, Any], assignment: str, file: str | Path | None) -> None:
    """Apply `a.b.0.c=value` to the raw recipe dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise RecipeError(file, assignment, "an override must look like key.path=value")
    path, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(file, here, f"no list element {part} (the list has {len(node)})")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(file, path, f"no list element {last} (the list has {len(node)})")
        node[int(last)] = value
    else:
        node[last] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(path, "", f"not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(path, "", "a recipe must be a YAML mapping")
    return data


__all__ = ["apply_override", "build", "convert", "did_you_mean", "read_yaml", "to_dict"]
