"""`DiffusionSpec`: everything algorithm code needs to know about a model family.

Algorithms, estimators and samplers never branch on the family; they read the spec and call
`aligned_logits`, which returns logits where `logits[:, i]` predicts token `i` for every family.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class DiffusionSpec:
    """Family-level facts of a masked diffusion LM.

    Attributes:
        mask_token_id: id of the [MASK] token the model was trained with.
        shift_logits: True when position i-1 predicts token i (Dream, AR-initialised models).
        attention: "full" (bidirectional: LLaDA, Dream) or "block" (block-causal: SDAR).
        block_size: block length of block attention (None for full attention).
        eos_token_ids: ids that end a response (first one is used to pad finished sequences).
        pad_token_id: id used to left-pad prompts (masked out by the attention mask).
    """

    mask_token_id: int
    shift_logits: bool
    attention: Literal["full", "block"]
    block_size: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int

    def __post_init__(self) -> None:
        if self.attention not in ("full", "block"):
            raise ValueError(f"DiffusionSpec.attention must be 'full' or 'block', got {self.attention!r}")
        if self.attention == "block" and (self.block_size is None or self.block_size < 1):
            raise ValueError(f"block attention needs a positive block_size, got {self.block_size!r}")
        if not self.eos_token_ids:
            raise ValueError("DiffusionSpec.eos_token_ids must name at least one id")
        if self.mask_token_id in self.eos_token_ids or self.mask_token_id == self.pad_token_id:
            raise ValueError(
                f"mask_token_id {self.mask_token_id} must differ from eos {self.eos_token_ids} and pad {self.pad_token_id}"
            )

    @property
    def eos_token_id(self) -> int:
        return self.eos_token_ids[0]


def aligned_logits(logits: torch.Tensor, spec: DiffusionSpec) -> torch.Tensor:
    """Logits `[B, L, V]` re-aligned so that `out[:, i]` predicts token i.

    Dream's logits at i predict token i+1 (it was initialised from an AR model), so position i
    takes the logits of i-1; position 0 has no predecessor and keeps its own (as Dream's sampler
    does; the first position is always a prompt token in practice).
    """
    if not spec.shift_logits:
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def _as_tuple(ids: int | list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, int):
        return (ids,)
    return tuple(int(i) for i in ids)


def spec_from_config(
    config,
    *,
    shift_logits: bool,
    attention: Literal["full", "block"],
    block_size: int | None = None,
    config_file: str = "config.json",
) -> DiffusionSpec:
    """Build a spec from a family config, refusing a config without a mask token id."""
    mask = getattr(config, "mask_token_id", None)
    if mask is None:
        raise ValueError(
            f"{config_file}: model_type {config.model_type!r} has no mask_token_id; add the id of the "
            "[MASK] token the checkpoint was trained with (e.g. 126336 for LLaDA, 151666 for Dream, "
            "151669 for SDAR)"
        )
    eos = _as_tuple(getattr(config, "eos_token_id", None))
    pad = getattr(config, "pad_token_id", None)
    if not eos and pad is not None:
        eos = (pad,)
    if pad is None:
        pad = eos[0] if eos else None
    if pad is None:
        raise ValueError(f"{config_file}: neither eos_token_id nor pad_token_id is set")
    return DiffusionSpec(
        mask_token_id=int(mask),
        shift_logits=shift_logits,
        attention=attention,
        block_size=block_size,
        eos_token_ids=eos,
        pad_token_id=int(pad),
    )


def model_spec(model: torch.nn.Module) -> DiffusionSpec:
    """The `DiffusionSpec` of a dare model (also through a PEFT wrapper), or a ValueError saying
    why there is none."""
    base = getattr(model, "get_base_model", lambda: model)()
    get_spec = getattr(base, "diffusion_spec", None)
    if get_spec is None:
        raise ValueError(
            f"{type(base).__name__} has no diffusion_spec(); load models with dare.models.from_pretrained or tiny"
        )
    return get_spec()  # raises ValueError naming mask_token_id when the config lacks it


# The reference policy of an objective, as a context manager yielding the model: a frozen copy of
# the starting policy, or the policy itself with its LoRA adapter disabled.
ReferenceFn = Callable[[], AbstractContextManager[torch.nn.Module]]


__all__ = ["DiffusionSpec", "aligned_logits", "spec_from_config", "ReferenceFn", "model_spec"]
