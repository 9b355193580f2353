"""Stage trainers and the pipeline runner."""

from dare.trainer import rl, sft  # noqa: F401  (registers the sft and rl stage kinds)
from dare.trainer.pipeline import STAGE_TRAINERS, Pipeline

__all__ = ["STAGE_TRAINERS", "Pipeline"]
