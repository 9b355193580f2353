"""Typed-dataclass config loading: YAML + dotted command-line overrides -> validated dataclasses.

Every error names the recipe file and the dotted key (`stages[1].lr`) and says what was
expected; unknown keys get a "did you mean". Defaults live only in the dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
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


def short_repr(value: Any, limit: int = 80, depth: int = 0) -> str:
    """`repr(value)` cut to `limit` characters. Containers show their first items, two levels
    deep: a recipe value can be huge (an alias bomb expands to billions of items), so it is never
    rendered whole."""
    if isinstance(value, (dict, list)):
        if depth >= 2:
            return "{...}" if isinstance(value, dict) else "[...]"
        items = itertools.islice(value.items() if isinstance(value, dict) else value, 4)
        if isinstance(value, dict):
            parts = [f"{short_repr(k, limit, depth + 1)}: {short_repr(v, limit, depth + 1)}" for k, v in items]
        else:
            parts = [short_repr(v, limit, depth + 1) for v in items]
        more = f", ... ({len(value)} items)" if len(value) > 4 else ""
        text = ("{%s}" if isinstance(value, dict) else "[%s]") % (", ".join(parts) + more)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def convert(tp: Any, value: Any, key: str, file: str | Path | None) -> Any:
    """Check `value` against the annotation `tp` (and build nested dataclasses). Floats must be
    finite: NaN and infinities are refused everywhere."""
    origin = typing.get_origin(tp)
    bad = _BadValue(tp, value, key, file)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad.error()
        return build(tp, value, key, file)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise RecipeError(
                file,
                key,
                f"must be one of {list(typing.get_args(tp))}, got {short_repr(value)}"
                f"{did_you_mean(str(value), [str(a) for a in typing.get_args(tp)])}",
            )
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad.error()
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
        raise bad.error()
    if origin is list:
        if not isinstance(value, list):
            raise bad.error()
        (item,) = typing.get_args(tp) or (Any,)
        return [convert(item, v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad.error()
        _, item = typing.get_args(tp) or (str, Any)
        for k in value:
            if not isinstance(k, str):
                raise RecipeError(file, key, f"keys must be strings, got {short_repr(k)} ({type(k).__name__})")
        return {k: convert(item, v, f"{key}.{k}", file) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad.error()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad.error()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad.error()
        try:
            number = float(value)  # YAML reads 1e-4 (no dot) as a string
        except (ValueError, OverflowError):  # not a number; an int beyond float range
            raise bad.error() from None
        if not math.isfinite(number):
            raise RecipeError(file, key, f"must be a finite number, got {short_repr(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad.error()
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")


class _BadValue:
    """The "expected T, got V" error of `convert`, built only when raised (rendering a value
    is not free: see `short_repr`)."""

    def __init__(self, tp: Any, value: Any, key: str, file: str | Path | None) -> None:
        self.tp, self.value, self.key, self.file = tp, value, key, file

    def error(self) -> RecipeError:
        got = f"{short_repr(self.value)} ({type(self.value).__name__})"
        return RecipeError(self.file, self.key, f"expected {_type_name(self.tp)}, got {got}")


def check_finite(value: Any, key: str, file: str | Path | None) -> None:
    """Refuse NaN / infinity anywhere inside a free-form (`Any`-typed) value."""
    stack = [(key, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}", x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
        elif not _is_finite(v):
            raise RecipeError(file, where, f"must be a finite number, got {v!r}")


def build(cls: type, data: dict[str, Any], key: str, file: str | Path | None) -> Any:
    """Build dataclass `cls` from `data`: unknown keys and missing required keys are errors; the
    instance's `validate(key, file)` (if any) then checks values and combinations."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    for name in data:
        if not isinstance(name, str):
            raise RecipeError(file, key, f"keys must be strings, got {short_repr(name)} ({type(name).__name__})")
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


# Limits of a recipe file (and of an override's value). Shipped recipes are a few KB, a few
# hundred nodes, nesting depth < 10; the limits refuse hostile files before they cost memory.
MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 64
# nodes after expanding every alias (`*a` counts the whole anchored subtree again)
MAX_EXPANDED_NODES = 100_000


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, nesting deeper than MAX_DEPTH and documents
    whose alias-expanded size exceeds MAX_EXPANDED_NODES (a "billion laughs" alias bomb). The
    limits are checked on the composed node graph, before any Python object is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # the scanner reads a whole flow collection ahead (looking for a `:`) before the composer
        # sees it: without this limit, 100k `[` cost seconds before the depth check could run
        if self.flow_level >= MAX_DEPTH:
            raise _LimitError(self.get_mark(), f"nested deeper than {MAX_DEPTH} levels")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):  # an alias reuses a composed node: no recursion
            return super().compose_node(parent, index)
        # the composer recurses once per nesting level: count before recursing
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(self.peek_event().start_mark, f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges (flattened by the base class)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise _LimitError(key_node.start_mark, "a mapping key must be a plain value") from None
            if key in seen:
                raise _LimitError(key_node.start_mark, f"duplicate key {short_repr(key)} (first at line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _LimitError(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark, message: str) -> None:
        super().__init__(message)
        self.mark, self.message = mark, message


def _check_expanded_size(root: yaml.Node) -> None:
    """Size and depth of the node graph with every alias expanded, computed once per distinct
    node (iteratively: an alias chain may be deeper than Python's recursion limit)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        children = _children(node)
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            continue
        size[id(node)] = min(1 + sum(size[id(c)] for c in children), MAX_EXPANDED_NODES + 1)
        depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
        if size[id(node)] > MAX_EXPANDED_NODES:
            raise _LimitError(node.start_mark, f"expands to more than {MAX_EXPANDED_NODES} values (aliases included)")
        if depth[id(node)] > MAX_DEPTH:
            raise _LimitError(node.start_mark, f"nested deeper than {MAX_DEPTH} levels (aliases included)")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml_text(text: str, file: str | Path | None, key: str = "") -> Any:
    """Parse YAML `text` safely (see `_LimitedLoader`). Raises `RecipeError` naming the file,
    `key` and the line."""
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    except _LimitError as e:
        raise RecipeError(file, key, f"line {e.mark.line + 1}: {e.message}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(file, key, f"{where}not valid YAML ({problem})") from None
    except RecursionError:  # a defence in depth: the limits above keep the composer shallow
        raise RecipeError(file, key, f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def apply_override(data: dict[str, Any], assignment: str, file: str | Path | None) -> None:
    """Apply `a.b.0.c=value` to the raw recipe dict (value parsed as YAML). Every way it cannot
    apply (a path through a number or a string, a missing list element, a value that is not
    YAML) is a `RecipeError` naming the key."""
    if "=" not in assignment:
        raise RecipeError(file, assignment, "an override must look like key.path=value")
    path, raw = assignment.split("=", 1)
    parts = path.split(".")
    if not all(parts):
        raise RecipeError(file, path, "an override key is dotted names, e.g. stages.0.lr=1e-4")
    value = load_yaml_text(raw, file, f"override {path}") if raw != "" else None
    node: Any = data
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(file, here, f"no list element {part} (the list has {len(node)})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            parent = ".".join(parts[:i])
            raise RecipeError(
                file,
                path,
                f"cannot set {part!r}: {parent} is {short_repr(node)} ({type(node).__name__}), not a mapping",
            )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping: UTF-8, at most MAX_RECIPE_BYTES, parsed with the limits of
    `load_yaml_text`. Raises `FileNotFoundError` or `RecipeError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: recipe file not found")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(path, "", f"is {size} bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(
            path, "", f"line {line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})"
        ) from None
    data = load_yaml_text(text, path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise RecipeError(path, "", f"a recipe must be a YAML mapping (model:, stages:, ...), got {got}")
    return data


__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_NODES",
    "MAX_RECIPE_BYTES",
    "apply_override",
    "build",
    "check_finite",
    "convert",
    "did_you_mean",
    "load_yaml_text",
    "read_yaml",
    "short_repr",
    "to_dict",
]
