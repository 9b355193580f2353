"""Dream (Dream-org/Dream-v0-Base-7B, Dream-v0-Instruct-7B): a masked diffusion LM initialised from
Qwen2.5, so it keeps the Qwen2 layout (q/k/v biases) and the autoregressive logit alignment:
**`logits[:, i]` predicts token i+1** (`DiffusionSpec.shift_logits=True`; use
`dare.models.aligned_logits`). Attention is bidirectional.

Weight-compatible with the released checkpoints (`model.embed_tokens`, `model.layers.{i}.self_attn.*`,
`model.norm`, `lm_head`); `model_type` "Dream". Reference: Ye et al., "Dream 7B" (arXiv 2508.15487).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoModel, AutoModelForMaskedLM

from dare.models.family import ModelFamily, register_family
from dare.models.qwen_layers import QwenBackbone, QwenDiffusionConfig, QwenLM
from dare.models.spec import DiffusionSpec, spec_from_config


@strict
class DreamConfig(QwenDiffusionConfig):
    """Qwen2-style config; defaults reproduce Dream-v0-Instruct-7B."""

    model_type = "Dream"

    # the release's sizes and ids: the same declarations (names, types, order) in every Qwen-layout
    # family, kept so by tests/models/test_model_files.py
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    max_position_embeddings: int = 131072
    mask_token_id: int | None = 151666

    def validate_architecture(self) -> None:
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"DreamConfig: hidden_size={self.hidden_size} must divide by num_attention_heads="
                f"{self.num_attention_heads}, and that by num_key_value_heads={self.num_key_value_heads}"
            )
        if self.hidden_act != "silu" or self.rope_scaling is not None or self.use_sliding_window:
            raise ValueError(
                "DreamConfig: only hidden_act='silu', rope_scaling=None and use_sliding_window=False are "
                f"supported (got {self.hidden_act!r}, {self.rope_scaling!r}, {self.use_sliding_window!r})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def diffusion_spec(self) -> DiffusionSpec:
        return spec_from_config(self, shift_logits=True, attention="full")


def dream_7b() -> DreamConfig:
    """Dream-v0-Base-7B / Dream-v0-Instruct-7B sizes."""
    return DreamConfig()


def dream_tiny(vocab_size: int = 64, **overrides) -> DreamConfig:
    """A ~0.35M-parameter Dream (GQA 4/2 heads, q/k/v biases) for CPU tests."""
    return DreamConfig.tiny(vocab_size, **overrides)


class DreamBaseModel(QwenBackbone):
    """embed_tokens -> bidirectional Qwen2 layers (q/k/v biases) -> norm; returns hidden states."""

    config_class = DreamConfig
    qkv_bias, qk_norm = True, False


class DreamModel(QwenLM):
    """The released top-level class (`architectures: ["DreamModel"]`): `.model` + `.lm_head`.
    Logits are returned raw (AR-aligned); see `DiffusionSpec.shift_logits`."""

    config_class = DreamConfig
    backbone_class = DreamBaseModel


# Dream's auto_map names only AutoModel; the masked-LM class is registered too, for convenience
register_family(ModelFamily("dream", DreamModel, dream_tiny, {AutoModel: DreamModel, AutoModelForMaskedLM: DreamModel}))

__all__ = ["DreamBaseModel", "DreamConfig", "DreamModel", "dream_7b", "dream_tiny"]
