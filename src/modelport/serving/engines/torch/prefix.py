"""Prefix caching: prompts that begin alike (a system prompt, few-shot examples, a long document asked
many questions) prefill what they share once.

After a prompt's tokens enter a row of the KV cache, each full block of ``BLOCK`` tokens is copied into
this store under a key that chains the hashes of every block before it (vLLM's scheme), so a key names
a whole prefix, not a block's tokens alone: the same 32 tokens after different text are different
entries. A new sequence looks up its prompt's keys in order, copies the longest run it finds into its
row, and prefills only the rest (always at least one token, whose logits choose the first token).
Entries live in an LRU under a byte budget (``MODELPORT_PREFIX_CACHE_BYTES``).

Keys are salted with the base model, the adapter (a LoRA changes every layer's keys and values) and the
account: one tenant's prompts are never reused for another, who could otherwise learn from a fast first
token that someone else sent the same text.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK = 32  # tokens per entry


@dataclass(frozen=True)
class Block:
    keys: torch.Tensor  # (layers, kv heads, BLOCK, head dim)
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


class PrefixCache:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()  # least recently used first
        self.nbytes = 0
        self.hits = 0  # sequences that reused at least one block
        self.reused_tokens = 0

    @staticmethod
    def keys(salt: str, tokens: list[int]) -> list[bytes]:
        """One key per full block of ``tokens``: block i's key covers ``tokens[: (i + 1) * BLOCK]``."""
        digest = hashlib.blake2b(salt.encode(), digest_size=16).digest()
        keys = []
        for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
            block = array("q", tokens[start : start + BLOCK]).tobytes()
            digest = hashlib.blake2b(digest + block, digest_size=16).digest()
            keys.append(digest)
        return keys

    def match(self, keys: list[bytes]) -> list[Block]:
        """The stored blocks of the longest run of ``keys`` from the first."""
        found = []
        for key in keys:
            block = self._blocks.get(key)
            if block is None:
                break
            self._blocks.move_to_end(key)
            found.append(block)
        if found:
            self.hits += 1
            self.reused_tokens += len(found) * BLOCK
        return found

    def __contains__(self, key: bytes) -> bool:
        return key in self._blocks

    def put(self, key: bytes, block: Block) -> None:
        if key in self._blocks or block.nbytes > self.budget:
            return
        self._blocks[key] = block
        self.nbytes += block.nbytes
        while self.nbytes > self.budget:
            _, evicted = self._blocks.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._blocks)

    def stats(self) -> dict[str, int]:
        return {
            "bytes": self.nbytes,
            "budget_bytes": self.budget,
            "blocks": len(self._blocks),
            "hits": self.hits,
            "reused_tokens": self.reused_tokens,
        }
