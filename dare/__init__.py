"""dare: post-training for diffusion language models.

Importing dare registers its model families with transformers' Auto* classes.
"""

from dare import models  # noqa: F401  (registers LLaDA / Dream / SDAR with transformers)

__version__ = "0.1.0"
