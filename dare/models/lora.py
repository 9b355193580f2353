"""LoRA through peft for every family.

`target_modules="all-linear"` is resolved here to every `nn.Linear` except the LM head, by full
module name: peft's own "all-linear" drops every module that shares the head's last name
component, and LLaDA's head (`transformer.ff_out`) shares it with each block's down projection.

MoE families: "all-linear" means attention, dense MLPs and shared experts. The routers (`mlp.gate`)
are never adapted, and the routed experts (`mlp.experts.{e}.*`: E x 3 adapters per layer, each
trained only on the tokens routed to it) only with `routed_experts=True`.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from dare.models.moe import SparseMoeBlock


def linear_module_names(model: PreTrainedModel, routed_experts: bool = False) -> list[str]:
    """Full names of all linear layers except the output head and MoE routers; routed experts
    only with `routed_experts`."""
    head = model.get_output_embeddings()
    skip = {id(head)}
    for m in model.modules():
        if isinstance(m, SparseMoeBlock):
            skip.add(id(m.gate))
            if not routed_experts:
                skip.update(id(sub) for sub in m.experts.modules())
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in skip]


def apply_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    routed_experts: bool = False,
) -> PeftModel:
    """Wrap `model` with LoRA adapters. `target_modules` is "all-linear" or a list of module-name
    suffixes (e.g. ["q_proj", "v_proj"]). The reference policy is the same model with the adapter
    disabled (`with peft_model.disable_adapter(): ...`). `routed_experts`: "all-linear" also adapts
    an MoE model's routed experts."""
    if target_modules == "all-linear":
        targets: list[str] | str = linear_module_names(model, routed_experts)
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
