"""Building a policy and its tokenizer from a recipe's `model` block (a plain dict, so it crosses
process boundaries): a family preset at random init or a checkpoint (`dare.models.checkpoint`),
the recipe's LoRA adapter, the built-in tasks' tokenizer or a released one."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dare.data.tasks import builtin_tokenizer
from dare.models import FAMILIES, load_config, tiny
from dare.models.checkpoint import check_model_tokenizer, check_vocab, load_policy, load_policy_skeleton
from dare.models.dtypes import DTYPES
from dare.models.lora import apply_lora
from dare.models.released_tokenizers import load_tokenizer as load_released_tokenizer
from dare.models.tokenizer import model_token_ids


def load_tokenizer(model_spec: dict[str, Any]) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer: "builtin" (the built-in tasks' char tokenizer), a folder or Hub id,
    or the checkpoint's own (released tokenizers load without remote code)."""
    source = model_spec.get("tokenizer") or model_spec.get("path") or "builtin"
    if source == "builtin":
        return builtin_tokenizer()
    return load_released_tokenizer(source)


def build_policy(
    model_spec: dict[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int, meta: bool = False
) -> PreTrainedModel:
    """A fresh policy from the recipe's model block (preset at random init, or a checkpoint). With
    `meta`, the same module tree on the meta device (no memory, no weight read, nothing drawn), with
    the same checks against the tokenizer."""
    dtype = DTYPES[model_spec.get("dtype", "float32")]
    if model_spec.get("path"):
        # built on the meta device, weights taken from the shards: never a random init first
        load = load_policy_skeleton if meta else load_policy
        model = load(model_spec["path"], dtype=dtype)
        check_model_tokenizer(model, tokenizer, model_spec["path"])
    else:
        ids = model_token_ids(tokenizer)
        overrides = {**ids, **model_spec.get("overrides", {})}
        # presets are small: drawn in float32 (the same init for every dtype), then cast
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = tiny(model_spec["family"], seed=seed, **overrides).to(dtype)
        check_vocab(model, tokenizer)
    if model_spec.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    return model


def policy_spec(model_spec: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> Any:
    """The `DiffusionSpec` of the policy `build_policy` builds (mask, end and pad ids), from its
    config alone: the checkpoint's config.json, or the preset's with the tokenizer's ids."""
    if model_spec.get("path"):
        return load_config(model_spec["path"]).diffusion_spec()
    overrides = {**model_token_ids(tokenizer), **model_spec.get("overrides", {})}
    vocab = overrides.pop("vocab_size")
    return FAMILIES.get(model_spec["family"]).tiny_config(vocab, **overrides).diffusion_spec()


def build_replica(model_spec: dict[str, Any], tokenizer_dir: str, seed: int, init_from: str | None) -> PreTrainedModel:
    """A copy of the actor's policy for another role (rollout, reference), built the actor's way: the
    same modules (LoRA included), so the actor's state dict loads into it as is."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = load_policy(init_from, merge=False) if init_from else build_policy(model_spec, tokenizer, seed)
    if model_spec.get("lora") and not hasattr(model, "peft_config"):
        model = wrap_lora(model, model_spec["lora"], seed)
    return model


def wrap_lora(model: PreTrainedModel, lora: dict[str, Any] | None, seed: int) -> PreTrainedModel:
    """Add the recipe's LoRA adapter. Its random init (peft's lora_A) is drawn from `seed`, so
    every data-parallel rank, process and resumed run starts from the same adapter. A model on the
    meta device gets its adapter there too (peft would otherwise allocate it on the CPU first)."""
    if not lora:
        return model
    on_meta = any(p.is_meta for p in model.parameters())
    with torch.random.fork_rng(devices=[]), torch.device("meta") if on_meta else contextlib.nullcontext():
        torch.manual_seed(seed)
        return apply_lora(
            model, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], target_modules=lora["target_modules"]
        )


__all__ = ["build_policy", "build_replica", "load_tokenizer", "policy_spec", "wrap_lora"]
