"""Post-training objectives, one file each, registered by name (`algorithm: sft` in a recipe)."""

from dare.algorithms import didi, dpo, drakes, ebpo, grpo, justgrpo, sft  # noqa: F401  (registers sft, masked_sft, block_sft, d1, coupled_grpo, dpo, vrpo, drakes, didi_instruct, ebpo, justgrpo)
from dare.algorithms.base import ALGORITHMS, Algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "register_algorithm"]
