"""Recipe-load checks of an algorithm's `Args`: one table of rules, one error format."""

from __future__ import annotations

from typing import Any

from dare.errors import RecipeError


def check_args(args: Any, checks: dict[str, tuple[bool, str]], key: str, file: Any) -> None:
    """Raise `RecipeError` for the first failed rule of `checks` ({field: (ok, rule)}), naming
    `<key>.<field>`, what was expected and the value found: `must be >= 1, got 0`."""
    for name, (ok, rule) in checks.items():
        if not ok:
            raise RecipeError(file, f"{key}.{name}", f"must be {rule}, got {getattr(args, name)!r}")


__all__ = ["check_args"]
