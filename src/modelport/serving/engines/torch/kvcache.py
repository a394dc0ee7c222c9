"""A key/value cache with one row per running sequence, so sequences can join and leave between steps.

transformers' attention layers call ``cache.update(keys, values, layer_idx)`` and attend over what it
returns. Rows are left-aligned (a sequence's position p lives at index p) and each row has its own
length; the runner passes a 4D mask that hides every index beyond a row's length, so one decode step
serves sequences of any lengths. A prompt enters in chunks: each chunk's keys are written at the
row's current length and the chunk attends over the row so far, so no pass needs more than
chunk x length of attention state. A finished sequence's row is refilled by moving the last row into
it, keeping the live rows contiguous (``0..n-1``).

Values are written finite (NaN and inf become 0): masked positions still enter the attention
product, and a stale NaN left in a row by one sequence would turn the next one's scores to NaN.
"""

from __future__ import annotations

from typing import Any

import torch


class SlotKVCache:
    def __init__(self, limit: int, max_rows: int, initial: int = 256) -> None:
        self.limit, self.max_rows, self.initial = limit, max_rows, initial  # context; the runner's row cap
        self.rows, self.capacity = 0, 0  # reserved (allocated at the first forward pass)
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._extend: tuple[list[int], list[int], list[int], int] | None = None
        self._decode: tuple[int, torch.Tensor, int] | None = None

    # --- what the runner calls around each forward pass -------------------------------------------
    def begin_extend(self, rows: list[int], starts: list[int], counts: list[int]) -> None:
        """The next forward is a left-padded chunk: ``counts[i]`` tokens for row ``rows[i]``, at
        positions ``starts[i]`` onwards. Call ``reserve`` first."""
        width = max(s + n for s, n in zip(starts, counts, strict=True))
        assert max(rows) < self.rows and width <= self.capacity, "reserve before begin_extend"
        self._extend, self._decode = (rows, starts, counts, width), None

    def begin_decode(self, lengths: torch.Tensor) -> None:
        """The next forward appends one token to rows ``0..n-1``, at index ``lengths[i]`` of each."""
        width = int(lengths.max()) + 1
        assert len(lengths) <= self.rows and width <= self.capacity, "reserve before begin_decode"
        self._extend, self._decode = None, (len(lengths), lengths, width)

    def planned(self, rows: int, length: int) -> tuple[int, int]:
        """The (rows, capacity) that ``reserve(rows, length)`` would leave: growth doubles, so that
        appending one token at a time copies the cache only log(n) times."""
        new_rows = self.rows
        if rows > self.rows:
            new_rows = min(max(rows, min(2 * self.rows, rows + 64)), max(self.max_rows, rows))
        new_cap = self.capacity
        if length > self.capacity:
            new_cap = min(max(length, 2 * self.capacity, self.initial), max(self.limit, length))
        return new_rows, new_cap

    def reserve(self, rows: int, length: int, *, exact: bool = False) -> None:
        """Grow to hold ``rows`` rows of ``length`` tokens (``exact``: no more than that)."""
        new_rows, new_cap = (max(rows, self.rows), max(length, self.capacity)) if exact else self.planned(rows, length)
        if (new_rows, new_cap) != (self.rows, self.capacity):
            self._resize(new_rows, new_cap)

    def fit(self, rows: int, length: int) -> None:
        """Give memory back when the rows in use need a quarter of it or less (keeping twice what
        they need, and ``initial`` positions, so that growing again is not immediate)."""
        new_rows = min(self.rows, 2 * max(rows, 1)) if 4 * rows <= self.rows else self.rows
        new_cap = min(self.capacity, max(2 * length, self.initial)) if 4 * length <= self.capacity else self.capacity
        if self.keys and (new_rows, new_cap) != (self.rows, self.capacity):
            self._resize(new_rows, new_cap)

    def shrink(self) -> None:
        """Drop every buffer (the runner is idle); the next sequence starts small again."""
        self.keys.clear()
        self.values.clear()
        self.rows, self.capacity = 0, 0

    def move_row(self, src: int, dst: int, length: int) -> None:
        for store in (self.keys, self.values):
            for buf in store.values():
                buf[dst, :, :length] = buf[src, :, :length]

    def copy_out(self, row: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``start..start+n-1`` of ``row``, every layer: (layers, heads, n, dim) keys and values."""
        layers = range(len(self.keys))
        keys = torch.stack([self.keys[layer][row, :, start : start + n] for layer in layers])
        values = torch.stack([self.values[layer][row, :, start : start + n] for layer in layers])
        return keys, values

    def copy_in(self, row: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> int:
        """Write consecutive runs of positions, from 0, into ``row`` (what ``copy_out`` gave); how many
        positions. Call ``reserve`` first; a cache that dropped its buffers gets them back shaped as these."""
        n = sum(k.shape[2] for k in keys)
        for store, runs in ((self.keys, keys), (self.values, values)):
            for layer in range(runs[0].shape[0]):
                buf = store.get(layer)
                if buf is None:
                    heads, dim = runs[0].shape[1], runs[0].shape[3]
                    buf = runs[0].new_zeros((self.rows, heads, self.capacity, dim))
                    store[layer] = buf
                buf[row, :, :n] = torch.cat([run[layer] for run in runs], dim=1)
        return n

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in (self.keys, self.values) for t in s.values())

    def _resize(self, rows: int, capacity: int) -> None:
        keep_rows, keep_cap = min(rows, self.rows), min(capacity, self.capacity)
        for store in (self.keys, self.values):
            for layer, old in store.items():
                resized = old.new_zeros((rows, old.shape[1], capacity, old.shape[3]))
                resized[:keep_rows, :, :keep_cap] = old[:keep_rows, :, :keep_cap]
                store[layer] = resized
        self.rows, self.capacity = rows, capacity

    # --- the transformers Cache protocol ---------------------------------------------------------
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k_buf = self._buffer(self.keys, layer_idx, key_states)
        v_buf = self._buffer(self.values, layer_idx, value_states)
        if self._extend is not None:
            rows, starts, counts, width = self._extend
            padded = key_states.shape[2]
            for i, (row, start, n) in enumerate(zip(rows, starts, counts, strict=True)):
                k_buf[row, :, start : start + n] = _finite(key_states[i, :, padded - n :])
                v_buf[row, :, start : start + n] = _finite(value_states[i, :, padded - n :])
            if rows == list(range(rows[0], rows[0] + len(rows))):  # contiguous: a view, no copy
                return k_buf[rows[0] : rows[0] + len(rows), :, :width], v_buf[rows[0] : rows[0] + len(rows), :, :width]
            index = torch.tensor(rows, device=k_buf.device)
            return k_buf[index, :, :width], v_buf[index, :, :width]
        assert self._decode is not None, "begin_extend or begin_decode must precede a forward pass"
        n, at, width = self._decode
        live = torch.arange(n, device=at.device)
        k_buf[live, :, at] = _finite(key_states[:, :, 0])
        v_buf[live, :, at] = _finite(value_states[:, :, 0])
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


def _finite(states: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(states, nan=0.0, posinf=0.0, neginf=0.0)
