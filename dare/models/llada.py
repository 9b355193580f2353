"""LLaDA (GSAI-ML/LLaDA-8B-Base, LLaDA-8B-Instruct, LLaDA-1.5): a Llama-style masked diffusion LM
with bidirectional attention and OLMo-style config / state-dict names.

Weight-compatible with the released checkpoints (`model.transformer.wte`, `blocks.{i}.q_proj`, ...,
`ln_f`, `ff_out`); loads from a local folder with `dare.models.from_pretrained` or, after
`import dare`, with `transformers.AutoModel.from_pretrained` and no `trust_remote_code`.
No logits shift: `logits[:, i]` predicts the clean token at position i.
Reference: Nie et al., "Large Language Diffusion Models" (arXiv 2502.09992); ML-GSAI/LLaDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from dare.models.family import ModelFamily, register_family
from dare.models.layers import AttentionContext, RMSNorm, attend
from dare.models.modeling import DiffusionBackbone, DiffusionLM
from dare.models.spec import DiffusionSpec, spec_from_config


@strict
class LLaDAConfig(PreTrainedConfig):
    """OLMo-style config; defaults reproduce LLaDA-8B-Instruct."""

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    # transformers-standard names used by generic code (peft, accelerate, verl) -> OLMo's names
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "num_key_value_heads": "n_kv_heads",
    }

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 32
    n_layers: int = 32
    mlp_ratio: int | float = 4
    mlp_hidden_size: int | None = 12288
    max_sequence_length: int = 4096
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    rope: bool = True
    rope_theta: int | float = 500000.0
    rope_full_precision: bool = True
    layer_norm_type: str = "rms"
    rms_norm_eps: float = 1e-5
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = False
    include_bias: bool = False
    include_qkv_bias: bool | None = False
    activation_type: str = "silu"
    block_type: str = "llama"
    weight_tying: bool = False
    alibi: bool = False
    scale_logits: bool = False
    input_emb_norm: bool = False
    attention_layer_norm: bool = False
    block_group_size: int = 1
    multi_query_attention: bool | None = None
    init_std: float = 0.02
    use_cache: bool = False
    mask_token_id: int | None = 126336
    eos_token_id: int | list[int] | None = 126081
    pad_token_id: int | None = 126081

    def __post_init__(self, **kwargs):
        # attention always runs through dare.models.layers.attend (SDPA); a checkpoint's backend
        # choice (SDAR ships "flex_attention", Dream "eager") is accepted and ignored
        kwargs.pop("attn_implementation", None)
        if self.n_kv_heads is None:
            self.n_kv_heads = 1 if self.multi_query_attention else self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Refuse variants this implementation does not compute (no released checkpoint uses them)."""
        unsupported = {
            "layer_norm_type": (self.layer_norm_type, "rms"),
            "activation_type": (self.activation_type, "silu"),
            "block_type": (self.block_type, "llama"),
            "alibi": (self.alibi, False),
            "rope": (self.rope, True),
            "include_bias": (self.include_bias, False),
            "scale_logits": (self.scale_logits, False),
            "input_emb_norm": (self.input_emb_norm, False),
            "attention_layer_norm": (self.attention_layer_norm, False),
            "block_group_size": (self.block_group_size, 1),
        }
        bad = {k: v for k, (v, ok) in unsupported.items() if v != ok}
        if self.include_qkv_bias:
            bad["include_qkv_bias"] = self.include_qkv_bias
        if bad:
            raise ValueError(f"LLaDAConfig: unsupported values {bad} (released LLaDA checkpoints use the defaults)")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LLaDAConfig: d_model={self.d_model} must divide by n_heads={self.n_heads}, "
                f"and n_heads by n_kv_heads={self.n_kv_heads}"
            )
        if self.embedding_size < self.vocab_size:
            raise ValueError(f"LLaDAConfig: embedding_size={self.embedding_size} < vocab_size={self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def intermediate_size(self) -> int:
        return self.mlp_hidden_size or int(self.mlp_ratio * self.d_model)

    def diffusion_spec(self) -> DiffusionSpec:
        return spec_from_config(self, shift_logits=False, attention="full")


def llada_8b() -> LLaDAConfig:
    """LLaDA-8B-Base / -Instruct / LLaDA-1.5 sizes."""
    return LLaDAConfig()


def llada_tiny(vocab_size: int = 64, **overrides) -> LLaDAConfig:
    """A ~0.35M-parameter LLaDA for CPU tests and the quickstart (ids at the end of the vocab:
    pad/eos/mask are set by the tokenizer; overrides win)."""
    defaults = dict(
        d_model=128, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=256, max_sequence_length=512,
        vocab_size=vocab_size, embedding_size=vocab_size, rope_theta=10000.0,
        mask_token_id=vocab_size - 1, eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 2,
    )  # fmt: skip
    return LLaDAConfig(**(defaults | overrides))


class LLaDALlamaBlock(GradientCheckpointingLayer):
    """h = x + attn_out(Attn(attn_norm(x))); out = h + ff_out(silu(ff_proj(ff_norm(h))) * up_proj(ff_norm(h)))."""

    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        d, hd = config.d_model, config.head_dim
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, hd
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, config.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.intermediate_size, bias=False)  # gate (SiLU side)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.ff_out = nn.Linear(config.intermediate_size, d, bias=False)  # down

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, Q, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, Q, D]
        k = self.k_proj(h).view(B, Q, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, Q, D]
        v = self.v_proj(h).view(B, Q, self.n_kv_heads, self.head_dim).transpose(1, 2)
        x = x + self.attn_out(attend(self.layer_idx, q, k, v, ctx))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDAModel(DiffusionBackbone):
    """The OLMo-style backbone (`transformer.*`); it owns the LM head weight (`transformer.ff_out`,
    or `wte` with `weight_tying`), as upstream, which `LLaDAModelLM` applies."""

    config_class = LLaDAConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["LLaDALlamaBlock"]

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        config.validate_architecture()
        modules = dict(
            wte=nn.Embedding(config.embedding_size, config.d_model),
            blocks=nn.ModuleList(LLaDALlamaBlock(config, i) for i in range(config.n_layers)),
            ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
        )
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.embedding_size, bias=False)
        self.transformer = nn.ModuleDict(modules)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        return self.transformer.blocks, self.transformer.ln_f

    def head_weight(self) -> torch.Tensor:
        """The output projection `[V, d]`: `ff_out`, or the input embedding when tied."""
        return self.transformer.wte.weight if self.config.weight_tying else self.transformer.ff_out.weight


class LLaDAModelLM(DiffusionLM):
    """The released top-level class (`architectures: ["LLaDAModelLM"]`): `.model` is `LLaDAModel`."""

    config_class = LLaDAConfig
    _no_split_modules = ["LLaDALlamaBlock"]

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module | None:
        return None if self.config.weight_tying else self.model.transformer.ff_out

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.model.head_weight())  # [B, Q, d] -> [B, Q, V]


# LLaDA's auto_map names AutoModel and AutoModelForCausalLM; the masked-LM class is registered too
_AUTO_CLASSES = {AutoModel: LLaDAModelLM, AutoModelForCausalLM: LLaDAModelLM, AutoModelForMaskedLM: LLaDAModelLM}
register_family(ModelFamily("llada", LLaDAModelLM, llada_tiny, _AUTO_CLASSES))

__all__ = [
    "LLaDAConfig",
    "LLaDALlamaBlock",
    "LLaDAModel",
    "LLaDAModelLM",
    "llada_8b",
    "llada_tiny",
]
