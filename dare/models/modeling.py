"""The shared model kernel: the `PreTrainedModel` plumbing every family uses, written once.

Model-file policy (docs/models.md): one declared shared kernel. Code common to several families
lives here and in `layers.py` (norm, rotary, KV cache, attention mask, SDPA, the decoder loop) and
`qwen_layers.py` (the Qwen2/Qwen3 decoder stack Dream and SDAR share); a family file
(`llada.py`, `dream.py`, `sdar.py`) holds only what is its own: the config and its presets, the
module names of its released state dict, its attention kind and quirks, and its
`register_family(...)` call.

A family derives two classes, each naming its `config_class`:

- the **backbone** (`DiffusionBackbone`): embeddings -> decoder blocks -> final norm,
  returning hidden states `[B, Q, d]`. It names its parts (`get_input_embeddings`, `decoder`)
  and, for block attention, its block size (`attention_block_size`).
- the **LM** (`DiffusionLM`), the released top-level class: `.model` (the backbone) plus the
  output head, returning logits `[B, Q, V]` as the family's checkpoints produce them (Dream's
  are AR-aligned; `DiffusionSpec.shift_logits`).

Shapes: B batch, Q query length, d hidden size, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from dare.models.layers import DiffusionCache, build_attention_context, run_decoder
from dare.models.spec import DiffusionSpec


@dataclass
class DiffusionModelOutput(BaseModelOutputWithPast):
    """A backbone's output; `routing`: what its MoE layers report (None without MoE layers)."""

    routing: tuple | None = None


class DiffusionPreTrainedModel(PreTrainedModel):
    """What every family's classes share as transformers models."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # attention always runs through layers.attend (SDPA)

    def diffusion_spec(self) -> DiffusionSpec:
        return self.config.diffusion_spec()


class DiffusionBackbone(DiffusionPreTrainedModel):
    """forward: embeddings -> decoder blocks -> final norm. The family builds and names its parts
    (`get_input_embeddings`, `decoder`) and sets `_no_split_modules` to its block class."""

    def decoder(self) -> tuple[nn.ModuleList, nn.Module]:
        """The decoder blocks and the final norm (the family's module names)."""
        raise NotImplementedError

    def attention_block_size(self) -> int | None:
        """Block length of block-causal attention; None = bidirectional (the default)."""
        return None

    def rotary_dim(self) -> int:
        """Head dims that RoPE rotates (all of them unless the family rotates part: LLaDA2)."""
        return self.config.head_dim

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **attention: Any,
    ) -> DiffusionModelOutput:
        """Hidden states `[B, Q, d]` of `input_ids` `[B, Q]` (or of `inputs_embeds` `[B, Q, d]`).

        `attention` takes `attention_mask`, `position_ids`, `past_key_values`, `use_cache` and
        `replace_position`, as `layers.build_attention_context` documents them.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds  # [B, Q, d]
        ctx = build_attention_context(
            batch_size=x.shape[0], query_len=x.shape[1], device=x.device, head_dim=self.rotary_dim(),
            rope_theta=self.config.rope_theta, block_size=self.attention_block_size(), **attention,
        )  # fmt: skip
        x, hidden = run_decoder(*self.decoder(), x, ctx)
        return DiffusionModelOutput(
            last_hidden_state=x,
            past_key_values=ctx.cache,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            routing=tuple(ctx.routing) or None,
        )


class DiffusionLM(DiffusionPreTrainedModel):
    """forward: `.model` (the backbone) -> output head -> logits. The family builds `.model` and
    the head (`get_output_embeddings`; `lm_logits` where the head is not a module)."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[B, Q, d]` -> `[B, Q, V]`."""
        return self.get_output_embeddings()(hidden)

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
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits `[B, Q, V]` of `input_ids` `[B, Q]` (or `inputs_embeds` `[B, Q, d]`).

        `attention_mask`: 2-D padding mask `[B, Q]` or `[B, S+Q]` (S cached), or an explicit 4-D
        mask `[B, 1, Q, K]`; `position_ids` `[B, Q]` (default: left-padding aware);
        `past_key_values` a `DiffusionCache`, stored into with `use_cache`, or overwritten at
        `[replace_position, replace_position + Q)` (dual cache); see `layers.build_attention_context`.
        Other keyword arguments generic callers pass are ignored.
        """
        out = self.model(
            input_ids, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
            attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            use_cache=use_cache, replace_position=replace_position,
        )  # fmt: skip
        return self.lm_output(out, self.lm_logits(out.last_hidden_state))  # logits [B, Q, V]

    def lm_output(self, out: DiffusionModelOutput, logits: torch.Tensor) -> CausalLMOutputWithPast:
        """The forward's output from the backbone's and the logits (MoE families add routing)."""
        return CausalLMOutputWithPast(
            logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )


__all__ = ["DiffusionBackbone", "DiffusionLM", "DiffusionModelOutput", "DiffusionPreTrainedModel"]
