"""Exceptions shared across layers. This module imports nothing from dare, so any layer
(config, algorithms, rewards, data) can raise them without importing a higher one."""

from __future__ import annotations

from pathlib import Path


class RecipeError(ValueError):
    """A recipe (or override) is invalid. The message names the file and the key."""

    def __init__(self, file: str | Path | None, key: str, message: str) -> None:
        self.file, self.key = str(file) if file else "<recipe>", key
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {message}")


__all__ = ["RecipeError"]
