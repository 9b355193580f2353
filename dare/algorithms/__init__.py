"""Post-training objectives, one file each, registered by name (`algorithm: sft` in a recipe)."""

from dare.algorithms import grpo, sft  # noqa: F401  (registers sft, masked_sft, block_sft, d1, coupled_grpo)
from dare.algorithms.base import ALGORITHMS, Algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "register_algorithm"]
