"""LoRA through peft for every family.

`target_modules="all-linear"` is resolved here to every `nn.Linear` except the LM head, by full
module name: peft's own "all-linear" drops every module that shares the head's last name
component, and LLaDA's head (`transformer.ff_out`) shares it with each block's down projection.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Full names of all linear layers except the output head."""
    head = model.get_output_embeddings()
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


def apply_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
) -> PeftModel:
    """Wrap `model` with LoRA adapters. `target_modules` is "all-linear" or a list of module-name
    suffixes (e.g. ["q_proj", "v_proj"]). The reference policy is the same model with the adapter
    disabled (`with peft_model.disable_adapter(): ...`)."""
    if target_modules == "all-linear":
        targets: list[str] | str = linear_module_names(model)
    elif isinstance(target_modules, str):
        raise ValueError(f"lora.target_modules must be 'all-linear' or a list of names, got {target_modules!r}")
    else:
        targets = list(target_modules)
        names = [n for n, _ in model.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ValueError(f"lora.target_modules {missing} match no module of {type(model).__name__}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)


__all__ = ["apply_lora", "linear_module_names"]
