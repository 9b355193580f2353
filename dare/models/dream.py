"""Dream (Dream-org/Dream-v0-Base-7B, Dream-v0-Instruct-7B): a masked diffusion LM initialised from
Qwen2.5, so it keeps the Qwen2 layout (q/k/v biases) and the autoregressive logit alignment:
**`logits[:, i]` predicts token i+1** (`DiffusionSpec.shift_logits=True`; use
`dare.models.aligned_logits`). Attention is bidirectional.

Weight-compatible with the released checkpoints (`model.embed_tokens`, `model.layers.{i}.self_attn.*`,
`model.norm`, `lm_head`); `model_type` "Dream". Reference: Ye et al., "Dream 7B" (arXiv 2508.15487).
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from dare.models.layers import DiffusionCache, RMSNorm, build_attention_context, run_decoder
from dare.models.qwen_layers import QwenDecoderLayer
from dare.models.spec import DiffusionSpec, spec_from_config


@strict
class DreamConfig(PreTrainedConfig):
    """Qwen2-style config; defaults reproduce Dream-v0-Instruct-7B."""

    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = False
    tie_word_embeddings: bool = False
    rope_theta: int | float = 1000000.0
    rope_scaling: dict | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = 28
    attention_dropout: float | int = 0.0
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643

    def __post_init__(self, **kwargs):
        # attention always runs through dare.models.layers.attend (SDPA); a checkpoint's backend
        # choice (SDAR ships "flex_attention", Dream "eager") is accepted and ignored
        kwargs.pop("attn_implementation", None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

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
    fields = dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, vocab_size=vocab_size, rope_theta=10000.0,
        mask_token_id=vocab_size - 1, eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 2,
        bos_token_id=vocab_size - 2, max_window_layers=2,
    )  # fmt: skip
    fields.update(overrides)
    return DreamConfig(**fields)


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    config: DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["QwenDecoderLayer"]
    _supports_sdpa = True

    def diffusion_spec(self) -> DiffusionSpec:
        return self.config.diffusion_spec()


class DreamBaseModel(DreamPreTrainedModel):
    """embed_tokens -> bidirectional Qwen2 layers -> norm; returns hidden states."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        config.validate_architecture()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            QwenDecoderLayer(config, i, qkv_bias=True, qk_norm=False) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: DiffusionCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
        replace_position: int | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, Q, d]
        ctx = build_attention_context(
            batch_size=x.shape[0], query_len=x.shape[1], device=x.device,
            head_dim=self.config.head_dim, rope_theta=self.config.rope_theta, block_size=None,
            attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            use_cache=use_cache, replace_position=replace_position,
        )  # fmt: skip
        x, hidden = run_decoder(self.layers, self.norm, x, ctx)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=ctx.cache,
            hidden_states=tuple(hidden) if output_hidden_states else None,
        )


class DreamModel(DreamPreTrainedModel):
    """The released top-level class (`architectures: ["DreamModel"]`): `.model` + `.lm_head`.
    Logits are returned raw (AR-aligned); see `DiffusionSpec.shift_logits`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: DiffusionCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
        replace_position: int | None = None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache, replace_position,
            output_hidden_states,
        )  # fmt: skip
        return CausalLMOutputWithPast(
            logits=self.lm_head(out.last_hidden_state),  # [B, Q, V]
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
        )


__all__ = ["DreamBaseModel", "DreamConfig", "DreamModel", "DreamPreTrainedModel", "dream_7b", "dream_tiny"]
