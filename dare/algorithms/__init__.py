"""Post-training objectives, one file each, registered by name (`algorithm: sft` in a recipe)."""

from dare.algorithms import cj_grpo, didi, dpo, drakes, grpo, sft, tracerl  # noqa: F401  (registers sft, masked_sft, block_sft, d1, coupled_grpo, cj_grpo, tracerl, dpo, vrpo, drakes, didi_instruct)
from dare.algorithms.base import ALGORITHMS, Algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "register_algorithm"]
