"""A key/value cache with one row per running sequence, so sequences can join and leave between steps.

transformers' attention layers call ``cache.update(keys, values, layer_idx)`` and attend over what it
returns. Rows are left-aligned (a sequence's position p lives at index p) and each row has its own
length; the runner passes a 4D mask that hides every index beyond a row's length, so one decode step
serves sequences of any lengths. A finished sequence's row is refilled by moving the last row into
it, keeping the live rows contiguous (``0..n-1``).
"""

from __future__ import annotations

from typing import Any

import torch


class SlotKVCache:
    def __init__(self, limit: int, initial: int = 256) -> None:
        self.limit = limit  # the model's context length
        self.rows, self.capacity = 1, min(initial, limit)
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._prefill: tuple[list[int], list[int]] | None = None
        self._decode: tuple[int, torch.Tensor, int] | None = None

    # --- what the runner calls around each forward pass -------------------------------------------
    def begin_prefill(self, rows: list[int], lengths: list[int]) -> None:
        """The next forward is a left-padded prefill of ``rows`` whose prompts have ``lengths``."""
        self.reserve(max(rows) + 1, max(lengths))
        self._prefill, self._decode = (rows, lengths), None

    def begin_decode(self, lengths: torch.Tensor) -> None:
        """The next forward appends one token to rows ``0..n-1``, at index ``lengths[i]`` of each."""
        width = int(lengths.max()) + 1
        self.reserve(len(lengths), width)
        self._prefill, self._decode = None, (len(lengths), lengths, width)

    def reserve(self, rows: int, length: int) -> None:
        """Grow (doubling) to hold ``rows`` rows of ``length`` tokens; memory follows actual use."""
        if rows <= self.rows and length <= self.capacity:
            return
        new_rows = max(rows, min(2 * self.rows, rows + 64)) if rows > self.rows else self.rows
        new_cap = min(max(length, 2 * self.capacity), self.limit) if length > self.capacity else self.capacity
        for store in (self.keys, self.values):
            for layer, old in store.items():
                grown = old.new_zeros((new_rows, old.shape[1], new_cap, old.shape[3]))
                grown[: self.rows, :, : self.capacity] = old
                store[layer] = grown
        self.rows, self.capacity = new_rows, new_cap

    def shrink(self) -> None:
        """Drop every buffer (the runner is idle); the next sequence starts small again."""
        self.keys.clear()
        self.values.clear()
        self.rows, self.capacity = 1, min(256, self.limit)

    def move_row(self, src: int, dst: int, length: int) -> None:
        for store in (self.keys, self.values):
            for buf in store.values():
                buf[dst, :, :length] = buf[src, :, :length]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in (self.keys, self.values) for t in s.values())

    # --- the transformers Cache protocol ---------------------------------------------------------
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k_buf = self._buffer(self.keys, layer_idx, key_states)
        v_buf = self._buffer(self.values, layer_idx, value_states)
        if self._prefill is not None:
            rows, lengths = self._prefill
            padded = key_states.shape[2]
            for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                k_buf[row, :, :n] = key_states[i, :, padded - n :]
                v_buf[row, :, :n] = value_states[i, :, padded - n :]
            # Prefill attends over its own (padded) keys; the mask hides the padding.
            return key_states, value_states
        assert self._decode is not None, "begin_prefill or begin_decode must precede a forward pass"
        n, at, width = self._decode
        live = torch.arange(n, device=at.device)
        k_buf[live, :, at] = key_states[:, :, 0]
        v_buf[live, :, at] = value_states[:, :, 0]
        return k_buf[:n, :, :width], v_buf[:n, :, :width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # Only consulted when position_ids are missing; the runner always passes them.
        return 0

    def _buffer(self, store: dict[int, torch.Tensor], layer: int, states: torch.Tensor) -> torch.Tensor:
        buf = store.get(layer)
        if buf is None:
            # Allocated on first use, so head counts and dims come from the model as it really runs.
            heads, dim = states.shape[1], states.shape[3]
            buf = states.new_zeros((self.rows, heads, self.capacity, dim))
            store[layer] = buf
        return buf
