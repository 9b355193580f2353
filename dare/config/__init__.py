"""Recipes: YAML + dotted overrides -> a validated `Recipe` (before any model or Ray starts)."""

from __future__ import annotations

from pathlib import Path

from dare.config.loader import apply_override, read_yaml
from dare.config.schema import (
    DataSpec,
    EvalSpec,
    LoraSpec,
    ModelSpec,
    Recipe,
    ResourcesSpec,
    StageSpec,
    build_recipe,
)
from dare.errors import RecipeError


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read `path`, apply `key.path=value` overrides, validate. Raises `RecipeError` naming the
    file and the key, or `FileNotFoundError`."""
    data = read_yaml(path)
    for assignment in overrides:
        apply_override(data, assignment, path)
    return build_recipe(data, path)


__all__ = [
    "DataSpec",
    "EvalSpec",
    "LoraSpec",
    "ModelSpec",
    "Recipe",
    "RecipeError",
    "ResourcesSpec",
    "StageSpec",
    "build_recipe",
    "load_recipe",
]
