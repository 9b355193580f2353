"""Ray workers (verl single-controller): one class per role."""

from dare.workers import platform  # noqa: F401  (verl's CPU platform, registered before verl picks one)
