"""SDAR (JetLM/SDAR-1.7B/4B/8B-Chat): a block-diffusion LM in the Qwen3 layout (no biases, per-head
q_norm / k_norm before RoPE). Attention is **block-causal**: a token sees every token of its own
block and of earlier blocks (block = position // `block_size`, 4 in the releases), never a later
block. No logits shift.

Weight-compatible with the released checkpoints; `model_type` "sdar". Decoding runs block by block
with the KV cache (`use_cache=True` commits a block, `use_cache=False` reads the cache without
storing, like upstream's `store_kv`). Training passes the explicit `[x_t ; x_0]` mask.
Reference: Cheng et al., "SDAR" (arXiv 2510.06303); JetAstra/SDAR.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoModel, AutoModelForCausalLM

from dare.models.family import ModelFamily, register_family
from dare.models.qwen_layers import QwenBackbone, QwenDiffusionConfig, QwenLM
from dare.models.spec import DiffusionSpec, spec_from_config


@strict
class SDARConfig(QwenDiffusionConfig):
    """Qwen3-style config plus `block_size` and `mask_token_id`; defaults reproduce SDAR-8B-Chat."""

    model_type = "sdar"

    # the release's sizes and ids: the same declarations (names, types, order) in every Qwen-layout
    # family, kept so by tests/models/test_model_files.py
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int = 128
    max_position_embeddings: int = 32768
    attention_bias: bool = False
    block_size: int = 4
    mask_token_id: int | None = 151669

    def validate_architecture(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"SDARConfig: num_attention_heads={self.num_attention_heads} must divide by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.block_size < 1:
            raise ValueError(f"SDARConfig: block_size must be >= 1, got {self.block_size}")
        if self.attention_bias or self.hidden_act != "silu" or self.rope_scaling is not None or self.use_sliding_window:
            raise ValueError(
                "SDARConfig: only attention_bias=False, hidden_act='silu', rope_scaling=None and "
                f"use_sliding_window=False are supported (got {self.attention_bias!r}, {self.hidden_act!r}, "
                f"{self.rope_scaling!r}, {self.use_sliding_window!r})"
            )

    def diffusion_spec(self) -> DiffusionSpec:
        return spec_from_config(self, shift_logits=False, attention="block", block_size=self.block_size)


def sdar_1_7b() -> SDARConfig:
    return SDARConfig(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                      intermediate_size=6144)  # fmt: skip


def sdar_4b() -> SDARConfig:
    return SDARConfig(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=9728)  # fmt: skip


def sdar_8b() -> SDARConfig:
    return SDARConfig()


def sdar_tiny(vocab_size: int = 64, **overrides) -> SDARConfig:
    """A ~0.35M-parameter SDAR (head_dim 32, GQA 4/2, block_size 4) for CPU tests."""
    return SDARConfig.tiny(vocab_size, **({"head_dim": 32, "block_size": 4} | overrides))


class SDARModel(QwenBackbone):
    """embed_tokens -> block-causal Qwen3 layers (q_norm / k_norm) -> norm; returns hidden states."""

    config_class = SDARConfig
    qkv_bias, qk_norm = False, True

    def attention_block_size(self) -> int:
        return self.config.block_size


class SDARForCausalLM(QwenLM):
    """The released top-level class (`architectures: ["SDARForCausalLM"]`)."""

    config_class = SDARConfig
    backbone_class = SDARModel


# SDAR's auto_map names AutoModel -> SDARModel and AutoModelForCausalLM -> SDARForCausalLM
register_family(
    ModelFamily("sdar", SDARForCausalLM, sdar_tiny, {AutoModel: SDARModel, AutoModelForCausalLM: SDARForCausalLM})
)

__all__ = [
    "SDARConfig",
    "SDARForCausalLM",
    "SDARModel",
    "sdar_1_7b",
    "sdar_4b",
    "sdar_8b",
    "sdar_tiny",
]
