"""What sequences cost in memory, estimated from a model's config before anything is allocated.

The KV cache holds ``kv_token`` bytes per row and position. A prefill chunk of ``q`` queries over ``k``
keys also needs, for the duration of one layer: the attention mask and the float copy SDPA makes of
it, the scores and probabilities of the math kernel (every head), the keys and values repeated for
grouped-query attention and gathered for the chunk's rows, and the layer's activations. The figures
are upper bounds measured against real runs (``tests/security/test_engine_budgets.py``): the
estimate may refuse what would just fit, never admit what would not.

``MemoryLedger`` holds the engine's one budget for all of this, shared by the models it has loaded
(all on the engine thread, so without locks); each model's runner reports its cache size to it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

MIN_CHUNK = 64  # a model's usable context must allow prefill chunks at least this long


@dataclass(frozen=True)
class Footprint:
    kv_token: int  # KV cache bytes per row and position, all layers
    per_pair: int  # transient bytes per (query, key) pair in one layer
    per_key: int  # transient bytes per key and row in one layer
    per_query: int  # transient bytes per query token in one layer

    @classmethod
    def of(cls, config: Any, dtype_bytes: int) -> Footprint:
        text = getattr(config, "text_config", None) or config
        hidden = _int(text, "hidden_size", "n_embd", "d_model")
        heads = _int(text, "num_attention_heads", "n_head")
        kv_heads = _int(text, "num_key_value_heads") or heads
        layers = _int(text, "num_hidden_layers", "n_layer", "num_layers")
        head_dim = _int(text, "head_dim") or (hidden // heads if heads else 0)
        inter = _int(text, "intermediate_size", "n_inner") or 4 * hidden
        d = dtype_bytes
        return cls(
            kv_token=2 * layers * kv_heads * head_dim * d,
            per_pair=1 + 4 + 3 * heads * d,  # bool mask, its float copy, scores + softmax (+ masked copy)
            per_key=2 * (heads + kv_heads) * head_dim * d,  # K and V repeated per head, and gathered
            per_query=d * (8 * hidden + 2 * (heads + 2 * kv_heads) * head_dim + 4 * inter),
        )

    def cache(self, rows: int, length: int) -> int:
        return rows * length * self.kv_token

    def forward(self, rows: int, queries: int, keys: int) -> int:
        """Transient bytes of one forward pass of ``rows`` x ``queries`` tokens attending over ``keys``."""
        return rows * (queries * keys * self.per_pair + keys * self.per_key + queries * self.per_query)

    def one_sequence(self, length: int) -> int:
        """The least one sequence of ``length`` tokens needs: its cache plus a small final prefill chunk."""
        return self.cache(1, length) + self.forward(1, min(length, MIN_CHUNK), length)

    def longest_affordable(self, budget: int) -> int:
        """The longest sequence whose ``one_sequence`` fits ``budget`` (0 when not even one token does)."""
        lo, hi = 0, 1
        while self.one_sequence(hi) <= budget and hi < 1 << 40:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.one_sequence(mid) <= budget else (lo, mid)
        return lo


def _int(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


class MemoryLedger:
    """One budget for every loaded model's KV cache and forward-pass scratch."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()  # the engine thread holds; loading threads release evicted models

    def hold(self, holder: object, nbytes: int) -> None:
        with self._lock:
            if nbytes:
                self._held[id(holder)] = nbytes
            else:
                self._held.pop(id(holder), None)

    def available(self, holder: object) -> int:
        """What ``holder`` may use in all, counting what it holds now as its own."""
        with self._lock:
            return self.total - sum(n for key, n in self._held.items() if key != id(holder))

    @property
    def used(self) -> int:
        with self._lock:
            return sum(self._held.values())
