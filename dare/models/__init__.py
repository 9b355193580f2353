"""Model families (LLaDA, Dream, SDAR) as transformers models, their `DiffusionSpec`s, tiny presets
and tokenizers for the built-in tasks.

Each family file registers itself on import (`register_family` at its end); the imports of the
family files below are the registrations (docs/models.md: adding a family).
"""

from dare.models.auto import from_pretrained, load_config, tiny
from dare.models.dream import DreamConfig, DreamModel
from dare.models.family import FAMILIES, ModelFamily, family_of
from dare.models.layers import DiffusionCache
from dare.models.llada import LLaDAConfig, LLaDAModelLM
from dare.models.sdar import SDARConfig, SDARForCausalLM
from dare.models.spec import DiffusionSpec, aligned_logits

__all__ = [
    "FAMILIES",
    "DiffusionCache",
    "DiffusionSpec",
    "DreamConfig",
    "DreamModel",
    "LLaDAConfig",
    "LLaDAModelLM",
    "ModelFamily",
    "SDARConfig",
    "SDARForCausalLM",
    "aligned_logits",
    "family_of",
    "from_pretrained",
    "load_config",
    "tiny",
]
