"""Post-training objectives, one file each, registered by name (`algorithm: sft` in a recipe).

Every module of this package is imported here, so its registrations (algorithm, policy loss,
advantage estimator, log-prob estimator) exist as soon as `dare.algorithms` is imported: adding
an objective is adding its file, nothing else.
"""

import importlib
import pkgutil

from dare.algorithms.base import ALGORITHMS, Algorithm, register_algorithm

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "register_algorithm"]
