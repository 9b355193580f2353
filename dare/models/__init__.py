"""Model families (LLaDA, Dream, SDAR) as transformers models, their `DiffusionSpec`s, tiny presets
and tokenizers for the built-in tasks."""

from dare.models.auto import FAMILIES, ModelFamily, family_of, from_pretrained, load_config, tiny
from dare.models.dream import DreamConfig, DreamModel
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
