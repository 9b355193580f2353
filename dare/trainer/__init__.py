"""Stage trainers and the pipeline runner."""

from dare.trainer import distill, drakes, preference, rl, sft  # noqa: F401  (registers the sft, rl, preference and distill stage kinds; drakes)
from dare.trainer.pipeline import STAGE_TRAINERS, Pipeline

__all__ = ["STAGE_TRAINERS", "Pipeline"]
