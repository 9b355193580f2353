"""Post-training objectives, one file each, registered by name (`algorithm: sft` in a recipe)."""

from dare.algorithms import bgpo, didi, dpo, drakes, espo, grpo, sft, spg  # noqa: F401  (registers sft, masked_sft, block_sft, d1, coupled_grpo, dpo, vrpo, drakes, didi_instruct, bgpo, espo, spg)
from dare.algorithms.base import ALGORITHMS, Algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "register_algorithm"]
