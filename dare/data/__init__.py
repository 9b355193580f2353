"""Data: built-in synthetic tasks (`dare.data.tasks`), dataset loading (`loading`), chat
formatting and masked-diffusion collators (`formatting`).

The package exports each module's public names (its `__all__`), so a name is listed once, where
it is defined."""

from dare.data import formatting, loading, tasks
from dare.data.formatting import *  # noqa: F403
from dare.data.loading import *  # noqa: F403
from dare.data.tasks import *  # noqa: F403

__all__ = [*formatting.__all__, *loading.__all__, *tasks.__all__]
