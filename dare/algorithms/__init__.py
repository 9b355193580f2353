"""Post-training objectives, one file each, registered by name (`algorithm: sft` in a recipe)."""

from dare.algorithms import sft  # noqa: F401  (registers sft, masked_sft, block_sft)
from dare.algorithms.base import ALGORITHMS, Algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "register_algorithm"]
