"""Datasets from files (JSONL, JSON arrays, parquet, local Hugging Face dataset folders, folders of
JSONL/parquet shards) and from the built-in tasks, normalized to plain row dicts.

Normalized rows, by `kind`:

    sft:        {"prompt": str | [messages], "response": str, "ground_truth": Any}
    prompt:     {"prompt": str | [messages], "ground_truth": Any}   (+ "response" when present)
    preference: {"prompt": str | [messages], "chosen": str, "rejected": str}

`ground_truth` is None when the source has none. Columns of the source that were not consumed
(ids, `task`, `data_source`, scores) are kept under their own names. A prompt that is a single
user turn is stored as a string; longer conversations (a system turn, earlier turns) stay a list
of `{"role", "content"}` messages for the chat template.

Where a field is read from (first match wins; `columns={"prompt": "question", ...}` overrides):

    prompt        prompt | question | instruction | query | messages[:-1] (chat rows)
    response      response | completion | output | the final assistant turn of `messages`
    ground_truth  ground_truth | reward_model.ground_truth (verl's parquet format)
    chosen        chosen: a string, or a message list whose final assistant turn is the answer
    rejected      rejected: likewise (UltraFeedback-binarized rows: prompt, chosen, rejected
                  as message lists; without a prompt column the prompt is chosen[:-1])

A JSONL line that is not UTF-8 is a malformed row like any other. Malformed rows are located as `file:LINE` (JSONL, 1-based line numbers as in an editor) or
`file: row I` (parquet, HF datasets and JSON arrays, 0-based row index as in `dataset[I]`).
`on_error="fail"` (default) raises a ValueError at the first one, naming where and what was
expected; `on_error="skip"` drops them and logs one warning on the `dare.data` logger with the
number skipped and the first few reasons. A missing path raises FileNotFoundError naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from dare.data.formatting import chat_message
from dare.data.tasks import get_task

logger = logging.getLogger("dare.data")

Kind = Literal["sft", "prompt", "preference"]
OnError = Literal["skip", "fail"]
KINDS = ("sft", "prompt", "preference")
BUILTIN_PREFIX = "builtin:"
MAX_REPORTED_ERRORS = 5

_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "question", "instruction", "query"),
    "response": ("response", "completion", "output"),
    "ground_truth": ("ground_truth",),
    "messages": ("messages",),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
}
# the row fields a source column can be mapped to (`columns={"prompt": "question"}`)
ROW_FIELDS = tuple(_ALIASES)
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


class RowError(ValueError):
    """A malformed row: `reason` says what was expected."""


# --- normalization of one row -------------------------------------------------------------------


def _field(raw: Mapping[str, Any], name: str, columns: Mapping[str, str], used: set[str]) -> Any:
    """The value of canonical field `name` (None if absent); marks the source column used."""
    if name in columns:
        source = columns[name]
        if source not in raw:
            raise RowError(f"missing column {source!r} (mapped to {name!r}); row has {sorted(raw)}")
        used.add(source)
        return raw[source]
    for source in _ALIASES[name]:
        if source in raw:
            used.add(source)  # a null column (parquet fills absent values with None) is consumed too
            if raw[source] is not None:
                return raw[source]
    return None


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{what} must be a non-empty list of {{'role', 'content'}} messages, got {_short(value)}")
    try:
        return [chat_message(m, f"{what}[{i}]", _short(m)) for i, m in enumerate(value)]
    except ValueError as e:
        raise RowError(str(e)) from None


def _prompt(value: Any, what: str = "prompt") -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value:
            raise RowError(f"{what} is empty")
        return value
    messages = _messages(value, what)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return messages


def _split_chat(value: Any, what: str) -> tuple[list[dict[str, str]], str]:
    """(turns before, final assistant content) of a message list."""
    messages = _messages(value, what)
    if messages[-1]["role"] != "assistant":
        raise RowError(f"{what} must end with an assistant turn, got role {messages[-1]['role']!r}")
    return messages[:-1], messages[-1]["content"]


def _answer(value: Any, what: str) -> tuple[list[dict[str, str]] | None, str]:
    """A response given as a string, or as a message list ending with the assistant's answer:
    (the turns before it or None, the answer text)."""
    if isinstance(value, str):
        return None, value
    if isinstance(value, list):
        return _split_chat(value, what)
    raise RowError(f"{what} must be a string or a list of messages, got {_short(value)}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_row(raw: Any, kind: Kind = "sft", columns: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One source row as a normalized row of `kind` (see the module docstring).

    Raises:
        RowError: the row does not have what `kind` needs (the message says what was expected).
    """
    if not isinstance(raw, Mapping):
        raise RowError(f"expected an object (a dict of columns), got {type(raw).__name__}")
    columns = columns or {}
    used: set[str] = set()
    prompt = _field(raw, "prompt", columns, used)
    out: dict[str, Any] = {}

    if kind == "preference":
        chosen, rejected = _field(raw, "chosen", columns, used), _field(raw, "rejected", columns, used)
        if chosen is None or rejected is None:
            raise RowError("preference rows need 'chosen' and 'rejected'")
        chosen_before, out["chosen"] = _answer(chosen, "chosen")
        rejected_before, out["rejected"] = _answer(rejected, "rejected")
        if prompt is None:
            if not chosen_before:
                raise RowError("preference row has no 'prompt' and 'chosen' is not a conversation with one")
            if chosen_before != rejected_before:
                raise RowError(
                    "without a 'prompt' column, 'chosen' and 'rejected' must share their turns before the answer"
                )
            prompt = chosen_before
        out = {"prompt": _prompt(prompt), **out}
    else:
        response = _field(raw, "response", columns, used)
        # A chat row: the turns before the final assistant turn are the prompt, that turn the
        # response; an explicit prompt / response column wins over the conversation.
        messages = _field(raw, "messages", columns, used) if prompt is None or response is None else None
        if messages is not None:
            chat = _messages(messages, "messages")
            if chat[-1]["role"] == "assistant":
                if len(chat) == 1:
                    raise RowError("messages has no turn before the final assistant turn")
                prompt = chat[:-1] if prompt is None else prompt
                response = chat[-1]["content"] if response is None else response
            elif kind == "sft":
                raise RowError(f"messages must end with an assistant turn for sft rows, got role {chat[-1]['role']!r}")
            elif prompt is None:
                prompt = chat
        if prompt is None:
            raise RowError(
                f"missing the prompt: expected one of {list(_ALIASES['prompt'])} or 'messages' "
                f"(or map a column with columns={{'prompt': ...}}); row has {sorted(raw)}"
            )
        out["prompt"] = _prompt(prompt)
        if kind == "sft" and response is None:
            raise RowError(
                f"missing the response: expected one of {list(_ALIASES['response'])} or 'messages' ending "
                f"with an assistant turn; row has {sorted(raw)}"
            )
        if response is not None:
            if not isinstance(response, str):
                raise RowError(f"response must be a string, got {_short(response)}")
            out["response"] = response
        ground_truth = _field(raw, "ground_truth", columns, used)
        reward_model = raw.get("reward_model")
        if ground_truth is None and isinstance(reward_model, Mapping) and "ground_truth" in reward_model:
            ground_truth = reward_model["ground_truth"]
            used.add("reward_model")
        out["ground_truth"] = ground_truth

    for key, value in raw.items():  # keep the columns nobody consumed (ids, task, scores)
        if key not in used and key not in out:
            out[key] = value
    return out


# --- reading sources ----------------------------------------------------------------------------


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    # bytes, decoded line by line: a line that is not UTF-8 is one malformed row (`on_error`
    # applies), not an exception that names neither the file nor the line
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, RowError(f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, RowError(f"invalid JSON ({e.msg} at column {e.colno})")


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    raw = path.read_bytes()
    if not raw.lstrip().startswith(b"["):
        yield from _iter_jsonl(path)  # a .json file holding JSON lines
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # one array: no row can be read without the rest
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); expected a UTF-8 JSON array"
        ) from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); expected an array of row objects") from None
    for i, item in enumerate(items):
        yield f"{path}: row {i}", item


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for i, item in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}: row {i}", item


def _iter_hf(path: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise ValueError(f"{path}: dataset has splits {sorted(ds)}, asked for split {split!r}")
        ds, path = ds[split], path / split
    for i, item in enumerate(ds):
        yield f"{path}: row {i}", item


def _iter_source(path: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_dir():
        if any((path / m).exists() for m in _HF_MARKERS):
            yield from _iter_hf(path, split)
            return
        shards = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _FILE_SUFFIXES)
        if not shards:
            raise ValueError(
                f"{path}: a dataset folder must be saved with datasets' save_to_disk or hold "
                f"{'/'.join(_FILE_SUFFIXES)} files; found neither"
            )
        for shard in shards:
            yield from _iter_source(shard, split)
        return
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".parquet": _iter_parquet}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(readers)}")
    yield from readers[path.suffix](path)


def load_rows(
    path: str | Path,
    kind: Kind = "sft",
    columns: Mapping[str, str] | None = None,
    on_error: OnError = "fail",
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Normalized rows of `kind` from a JSONL / JSON / parquet file, a `save_to_disk` dataset
    folder (`split` picks from a DatasetDict; it may be omitted when there is one split) or a
    folder of such files (read in name order).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: a malformed row with `on_error="fail"` (message `file:line: reason`), an
            unsupported file type, a missing split, or no valid row at all.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    path = Path(path)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for where, raw in _iter_source(path, split):
        try:
            if isinstance(raw, RowError):
                raise raw
            rows.append(normalize_row(raw, kind, columns))
        except RowError as e:
            if on_error == "fail":
                raise ValueError(f"{where}: {e} (kind={kind!r})") from None
            errors.append(f"{where}: {e}")
    if errors:
        first = "; ".join(errors[:MAX_REPORTED_ERRORS])
        logger.warning(
            "%s: skipped %d of %d malformed rows (kind=%r); first: %s",
            path,
            len(errors),
            len(errors) + len(rows),
            kind,
            first,
        )
    if not rows:
        raise ValueError(f"{path}: no valid rows" + (f" ({len(errors)} skipped; first: {errors[0]})" if errors else ""))
    return rows


def load_dataset_spec(
    spec: str,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    kind: Kind = "sft",
    columns: Mapping[str, str] | None = None,
    on_error: OnError = "fail",
    task_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows for a recipe's dataset string.

    `builtin:<task>` generates `n` rows of the task's `split` ("train" / "eval") with `seed`
    (`task_kwargs` are its difficulty knobs); built-in rows carry prompt, response and
    ground_truth, so they serve `sft` and `prompt` kinds; `builtin:pref-<task>` rows also carry
    chosen and rejected (`dare.data.tasks.preference`) and serve the `preference` kind too.
    Any other string is a path for `load_rows` (`split` picks a DatasetDict split; `n` keeps the
    first n rows; `seed` is unused, shuffling is the data loader's job).

    Raises:
        KeyError: unknown built-in task (lists the known ones).
        ValueError: see `load_rows`; `n` missing for a built-in task; a built-in task without
            pairs asked for preference rows.
    """
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        if n is None:
            raise ValueError(f"{spec}: built-in tasks are generated; give the number of rows n")
        rows = get_task(name, **(task_kwargs or {})).generate(split, n, seed)
        if kind == "preference" and rows and "rejected" not in rows[0]:
            raise ValueError(
                f"{spec}: this built-in task gives prompt/response rows, not preference pairs; "
                f"use builtin:pref-{name} (correct vs incorrect answers)"
            )
        return rows
    if task_kwargs:
        raise ValueError(f"{spec}: task_kwargs apply to builtin: datasets only")
    rows = load_rows(spec, kind=kind, columns=columns, on_error=on_error, split=split)
    return rows if n is None else rows[:n]


__all__ = ["BUILTIN_PREFIX", "KINDS", "ROW_FIELDS", "RowError", "load_dataset_spec", "load_rows", "normalize_row"]
