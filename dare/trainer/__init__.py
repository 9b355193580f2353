"""Stage trainers and the pipeline runner."""

from dare.trainer import distill, drakes, preference, rl, sft  # noqa: F401  (registers the sft, rl, preference and distill stage kinds; drakes)
from dare.trainer.pipeline import Pipeline
from dare.trainer.stage import STAGE_TRAINERS

__all__ = ["STAGE_TRAINERS", "Pipeline"]
