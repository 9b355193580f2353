"""Exceptions shared across layers. This module imports nothing from dare, so any layer
(config, algorithms, rewards, data) can raise them without importing a higher one."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RecipeError(ValueError):
    """A recipe (or override) is invalid. The message names the file and the key."""

    def __init__(self, file: str | Path | None, key: str, message: str) -> None:
        self.file, self.key = str(file) if file else "<recipe>", key
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {message}")


def check_fields(obj: Any, checks: dict[str, tuple[bool, str]], key: str, file: str | Path | None) -> None:
    """Raise `RecipeError` at `key.NAME` ("must be RULE, got VALUE") for the first field of
    `checks` (`{NAME: (ok, RULE)}`) that is not ok; an Args dataclass's range checks in one call."""
    for name, (ok, rule) in checks.items():
        if not ok:
            raise RecipeError(file, f"{key}.{name}", f"must be {rule}, got {getattr(obj, name)!r}")


__all__ = ["RecipeError", "check_fields"]
