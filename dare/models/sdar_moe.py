"""SDAR-MoE (JetLM/SDAR-30B-A3B-Chat): SDAR's block diffusion on a Qwen3-MoE body.

The attention, norms, block-causal rule, logits (no shift) and KV-cache use are SDAR's
(`dare.models.sdar`); the feed-forward of each sparse layer is a `dare.models.moe.SparseMoeBlock`
with the Qwen3-MoE router (`softmax_topk`: softmax over all experts, top-k, renormalised when
`norm_topk_prob`) and no shared expert. Layer i is sparse unless it is in `mlp_only_layers`, when
`num_experts > 0` and `(i + 1) % decoder_sparse_step == 0` (every layer in the release).

Weight-compatible with the release (`model.layers.{i}.mlp.gate.weight` `[E, d]`,
`mlp.experts.{e}.{gate,up,down}_proj`); `model_type` "sdar_moe". The released config.json has no
`block_size` and no `mask_token_id`: the defaults (4 and 151669) are SDAR's.
The forward returns `MoELMOutput`: `aux_loss` (Qwen3-MoE's load-balancing loss; the release's
weight is `router_aux_loss_coef`), `z_loss`, `router_stats`.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from dare.models.family import ModelFamily, register_family
from dare.models.layers import AttentionContext
from dare.models.moe import (
    MoEOutputs,
    SoftmaxTopKRouter,
    SparseMoeBlock,
    SwiGLUExperts,
    check_moe_routing,
    family_router,
    feed_forward,
)
from dare.models.qwen_layers import QwenDecoderLayer, QwenLM, QwenMLP
from dare.models.sdar import SDARConfig, SDARModel


@strict
class SDARMoeConfig(SDARConfig):
    """SDAR's config plus the Qwen3-MoE fields; defaults reproduce SDAR-30B-A3B-Chat."""

    model_type = "sdar_moe"

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 48
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 4
    head_dim: int = 128
    max_position_embeddings: int = 32768
    max_window_layers: int | None = 48
    decoder_sparse_step: int = 1
    moe_intermediate_size: int = 768
    num_experts_per_tok: int = 8
    num_experts: int = 128
    norm_topk_prob: bool = True
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.001
    mlp_only_layers: list[int] | None = None
    # dare's training-time option, not in the release: "expert_choice" (EC-DLM) replaces the router
    moe_routing: str = "token_choice"

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.num_experts > 0 and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"SDARMoeConfig: num_experts_per_tok={self.num_experts_per_tok} must be in [1, "
                f"num_experts={self.num_experts}]"
            )
        if self.decoder_sparse_step < 1:
            raise ValueError(f"SDARMoeConfig: decoder_sparse_step must be >= 1, got {self.decoder_sparse_step}")
        check_moe_routing(self)

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (
            layer_idx not in (self.mlp_only_layers or [])
            and self.num_experts > 0
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )


def sdar_30b_a3b() -> SDARMoeConfig:
    """SDAR-30B-A3B-Chat / -Sci sizes."""
    return SDARMoeConfig()


def sdar_moe_tiny(vocab_size: int = 64, **overrides) -> SDARMoeConfig:
    """A tiny SDAR-MoE for CPU tests: SDAR's tiny body (hidden 128, 2 layers, head_dim 32,
    block_size 4) with 4 experts of width 64, top-2, in both layers."""
    moe = dict(head_dim=32, block_size=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
    return SDARMoeConfig.tiny(vocab_size, **(moe | overrides))


class SDARMoeDecoderLayer(QwenDecoderLayer):
    """SDAR's layer with the Qwen3-MoE feed-forward on sparse layers."""

    def build_mlp(self, config: SDARMoeConfig, layer_idx: int) -> nn.Module:
        if not config.is_moe_layer(layer_idx):
            return QwenMLP(config.hidden_size, config.intermediate_size)
        router = family_router(config, SoftmaxTopKRouter(
            config.hidden_size, config.num_experts, config.num_experts_per_tok, norm_topk_prob=config.norm_topk_prob
        ))  # fmt: skip
        return SparseMoeBlock(
            router, SwiGLUExperts(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        )

    def forward(self, x, ctx: AttentionContext):
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + feed_forward(self.mlp, self.post_attention_layernorm(x), ctx)


class SDARMoeModel(SDARModel):
    """embed_tokens -> block-causal Qwen3-MoE layers -> norm (`AutoModel` of the release)."""

    config_class = SDARMoeConfig
    layer_class = SDARMoeDecoderLayer
    # FSDP wraps whole decoder layers, so a layer's experts, router and attention stay together
    _no_split_modules = ["SDARMoeDecoderLayer"]


class SDARMoeForCausalLM(MoEOutputs, QwenLM):
    """The released top-level class (`architectures: ["SDARMoeForCausalLM"]`)."""

    config_class = SDARMoeConfig
    backbone_class = SDARMoeModel
    _no_split_modules = ["SDARMoeDecoderLayer"]


register_family(
    ModelFamily(
        "sdar_moe", SDARMoeForCausalLM, sdar_moe_tiny,
        {AutoModel: SDARMoeModel, AutoModelForCausalLM: SDARMoeForCausalLM},
    )
)  # fmt: skip

__all__ = [
    "SDARMoeConfig",
    "SDARMoeDecoderLayer",
    "SDARMoeForCausalLM",
    "SDARMoeModel",
    "sdar_30b_a3b",
    "sdar_moe_tiny",
]
