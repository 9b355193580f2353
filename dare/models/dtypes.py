"""The one table of dtype names a recipe (`model.dtype`) or the CLI (`--dtype`) may use."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# short spellings accepted where a user types a dtype (CLI, `from_pretrained(dtype="bf16")`)
DTYPE_ALIASES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_dtype(dtype: torch.dtype | str | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """A `torch.dtype` from a name in `DTYPES` (or an alias), a dtype, or None (`default`)."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


__all__ = ["DTYPES", "DTYPE_ALIASES", "resolve_dtype"]
