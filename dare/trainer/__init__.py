"""Stage trainers and the pipeline runner."""

from dare.trainer import sft  # noqa: F401  (registers the sft stage kind)
from dare.trainer.pipeline import STAGE_TRAINERS, Pipeline

__all__ = ["STAGE_TRAINERS", "Pipeline"]
