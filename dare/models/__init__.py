"""Model families (LLaDA, Dream, SDAR, and the MoE families LLaDA2 and SDAR-MoE) as transformers models, their `DiffusionSpec`s, tiny presets
and tokenizers for the built-in tasks.

Each family file registers itself on import (`register_family` at its end); the imports of the
family files below are the registrations (docs/models.md: adding a family).
"""

from dare.models.auto import from_pretrained, load_config, tiny
from dare.models.dream import DreamConfig, DreamModel
from dare.models.family import FAMILIES, ModelFamily, family_of
from dare.models.layers import DiffusionCache
from dare.models.llada import LLaDAConfig, LLaDAModelLM
from dare.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeModelLM
from dare.models.sdar import SDARConfig, SDARForCausalLM
from dare.models.sdar_moe import SDARMoeConfig, SDARMoeForCausalLM
from dare.models.spec import DiffusionSpec, aligned_logits

__all__ = [
    "FAMILIES",
    "DiffusionCache",
    "DiffusionSpec",
    "DreamConfig",
    "DreamModel",
    "LLaDAConfig",
    "LLaDAModelLM",
    "LLaDA2MoeConfig",
    "LLaDA2MoeModelLM",
    "ModelFamily",
    "SDARConfig",
    "SDARForCausalLM",
    "SDARMoeConfig",
    "SDARMoeForCausalLM",
    "aligned_logits",
    "family_of",
    "from_pretrained",
    "load_config",
    "tiny",
]
