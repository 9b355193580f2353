"""The model-family registry: one `register_family(...)` call at the end of each family file
binds its name, top-level class (and through it the config), tiny preset and the transformers
Auto classes its released checkpoints' `auto_map` names.

Adding a family takes its own file in `dare/models/` (ending with that call) and one import line
in `dare/models/__init__.py`; nothing outside `dare/models/` names a family (docs/models.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from dare.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    """One diffusion-LM family.

    Attributes:
        name: the registry name recipes use (`model.family`, `tiny:<name>`).
        lm_cls: the top-level class that returns logits (`architectures` of the release); its
            `config_class` is the family's config (whose `model_type` is the one in config.json).
        tiny_config: `(vocab_size, **overrides) -> config`, the CPU-test preset.
        auto_classes: transformers Auto class -> the model class it loads (what the checkpoints'
            `auto_map` names, so a released folder loads without `trust_remote_code`).
    """

    name: str
    lm_cls: type[PreTrainedModel]
    tiny_config: Callable[..., PreTrainedConfig]
    auto_classes: Mapping[type, type[PreTrainedModel]]

    @property
    def config_cls(self) -> type[PreTrainedConfig]:
        return self.lm_cls.config_class

    @property
    def model_type(self) -> str:
        return self.config_cls.model_type


FAMILIES: Registry[ModelFamily] = Registry("model family")


def register_family(family: ModelFamily) -> ModelFamily:
    """Register `family` by name and with transformers' `AutoConfig` and its Auto model classes."""
    FAMILIES.register(family.name, family)
    AutoConfig.register(family.model_type, family.config_cls, exist_ok=True)
    for auto, model_cls in family.auto_classes.items():
        auto.register(family.config_cls, model_cls, exist_ok=True)
    return family


def family_for_model_type(model_type: str | None) -> ModelFamily | None:
    """The registered family whose config has `model_type`, or None."""
    return next((fam for _, fam in FAMILIES.items() if fam.model_type == model_type), None)


def known_model_types() -> list[str]:
    return sorted(fam.model_type for _, fam in FAMILIES.items())


def family_of(model_or_config: PreTrainedModel | PreTrainedConfig) -> ModelFamily:
    """The family of a model or config, or a ValueError listing the known model types."""
    config = getattr(model_or_config, "config", model_or_config)
    fam = family_for_model_type(config.model_type)
    if fam is None:
        raise ValueError(f"model_type {config.model_type!r} is not a dare family; known: {known_model_types()}")
    return fam


__all__ = ["FAMILIES", "ModelFamily", "family_for_model_type", "family_of", "known_model_types", "register_family"]
