"""`StaticKVCache`: the samplers' KV cache, preallocated once per decode and written in place.

The model layer's `DiffusionCache` grows by concatenation (a new tensor per stored forward, a
copy of the whole cache per cached step). The samplers know the final length up front
(T = padded prompt + gen_length), so this cache holds one `[B, Hkv, T, D]` buffer per layer and
one `[B, T]` position / validity table, allocated on the first write and reused for every block:

- store (prefill, block-start refresh, SDAR block commit): the new K/V are written at
  `[length - Q, length)` (the attention context has already advanced `positions` to `length`);
- no store (SDAR denoising steps, Fast-dLLM prefix-cache steps): the new K/V are written into
  the free tail `[length, length + Q)` as scratch and the view `[:length + Q]` is attended over;
  `length` does not move, so the next call overwrites them;
- replace (dual cache): `[r, r + Q)` is overwritten in place;
- `crop(n)` only moves `length` (no copy).

Buffer addresses never change, which is what a CUDA graph needs (`mark_static`). The values are
the ones the growing cache would hold, so decoding is token-identical to it.
"""

from __future__ import annotations

import torch

from dare.models.layers import DiffusionCache


class StaticKVCache(DiffusionCache):
    """A `DiffusionCache` of fixed capacity `capacity` (keys) written in place. Use under
    `torch.no_grad()` (decoding); `reset()` empties it without freeing memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.keys: list[torch.Tensor] = []  # each [B, Hkv, capacity, D]
        self.values: list[torch.Tensor] = []
        self._positions: torch.Tensor | None = None  # [B, capacity]
        self._valid: torch.Tensor | None = None  # [B, capacity] bool
        self.static_addresses = False
        self.padded = False

    def reset(self) -> None:
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, length: int) -> None:
        self.length = min(length, self.length)

    # the attention context reads and writes these as `[B, length]` tables
    @property
    def positions(self) -> torch.Tensor | None:
        return None if self._positions is None or self.length == 0 else self._positions[:, : self.length]

    @positions.setter
    def positions(self, value: torch.Tensor | None) -> None:
        if value is None:
            self.length = 0
            return
        self._positions = self._table(self._positions, value)
        self.length = value.shape[1]

    @property
    def valid(self) -> torch.Tensor | None:
        return None if self._valid is None or self.length == 0 else self._valid[:, : self.length]

    @valid.setter
    def valid(self, value: torch.Tensor | None) -> None:
        if value is not None:
            self._valid = self._table(self._valid, value)

    def _table(self, table: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        self._check_capacity(value.shape[1])
        if table is None:
            table = torch.zeros(value.shape[0], self.capacity, dtype=value.dtype, device=value.device)
        if table.data_ptr() != value.data_ptr():  # a view of the table itself needs no copy
            table[:, : value.shape[1]] = value
        return table

    def _check_capacity(self, needed: int) -> None:
        if needed > self.capacity:
            raise RuntimeError(f"StaticKVCache: {needed} positions needed, capacity is {self.capacity}")

    def mark_static(self) -> None:
        """Tell torch.compile the buffers keep their address (CUDA-graph capture with in-place writes)."""
        self.static_addresses = True
        for t in [*self.keys, *self.values]:
            torch._dynamo.mark_static_address(t)

    def update(
        self,
        layer_idx: int,
        k: torch.Tensor,
        v: torch.Tensor,
        store: bool,
        replace_position: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's new K/V `[B, Hkv, Q, D]` in place and return the keys to attend over."""
        if torch.is_grad_enabled():
            raise RuntimeError("StaticKVCache is written in place: use it under torch.no_grad() (decoding only)")
        q = k.shape[2]
        if layer_idx == len(self.keys):
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys.append(torch.zeros(shape, dtype=k.dtype, device=k.device))
            self.values.append(torch.zeros(shape, dtype=v.dtype, device=v.device))
            if self.static_addresses:
                torch._dynamo.mark_static_address(self.keys[-1])
                torch._dynamo.mark_static_address(self.values[-1])
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if replace_position is not None:
            at, visible = replace_position, self.length
        elif store:
            at, visible = self.length - q, self.length  # the context already advanced `length`
        else:
            at, visible = self.length, self.length + q  # scratch: the tail is free
        self._check_capacity(at + q)
        keys[:, :, at : at + q] = k
        values[:, :, at : at + q] = v
        return keys[:, :, :visible], values[:, :, :visible]


__all__ = ["StaticKVCache"]
