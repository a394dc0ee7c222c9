"""Sentence embeddings: a transformers encoder plus the pooling its sentence-transformers config names.

Inputs longer than the server's ``max_model_len`` are cut to it (as sentence-transformers cuts to
``max_seq_length``), and a batch runs in slices whose attention state fits the engine's sequence
memory: an encoder attends every token to every other, so a long input costs its length squared.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel  # at import: see engine.py on transformers' lazy names

from modelport.errors import ContextLengthExceeded
from modelport.serving.engine import Pooling
from modelport.serving.engines.torch.memory import Footprint, MemoryLedger


class Embedder:
    def __init__(
        self, model: nn.Module, pooling: Pooling, device: torch.device, max_len: int, ledger: MemoryLedger
    ) -> None:
        self.model, self.pooling, self.device, self.max_len, self.ledger = model, pooling, device, max_len, ledger
        self.footprint = Footprint.of(model.config, next(model.parameters()).dtype.itemsize)

    @classmethod
    def load(
        cls, path: Path, pooling: Pooling, device: torch.device, dtype: torch.dtype, max_len: int, ledger: MemoryLedger
    ) -> Embedder:
        model: nn.Module = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True, trust_remote_code=False)
        model.to(device)
        model.eval()
        return cls(model, pooling, device, max_len, ledger)

    def embed(self, batch: list[list[int]]) -> list[list[float]]:
        batch = [ids[: self.max_len] for ids in batch]
        longest = max(len(ids) for ids in batch)
        need = self.footprint.forward(1, longest, longest)
        if need > self.ledger.total:
            raise ContextLengthExceeded(
                f"an input of {longest} tokens needs about {need / 2**20:.0f} MiB of attention state, more than the "
                f"{self.ledger.total / 2**20:.0f} MiB the engine allows (MODELPORT_ENGINE_SEQUENCE_MEMORY_BYTES); "
                "please shorten it"
            )
        room = max(self.ledger.available(self), need)
        vectors: list[list[float]] = []
        start = 0
        while start < len(batch):
            end, width = start + 1, len(batch[start])
            while end < len(batch):
                wider = max(width, len(batch[end]))
                if self.footprint.forward(end + 1 - start, wider, wider) > room:
                    break
                end, width = end + 1, wider
            vectors += self._embed(batch[start:end])
            start = end
        return vectors

    @torch.inference_mode()
    def _embed(self, batch: list[list[int]]) -> list[list[float]]:
        width = max(len(ids) for ids in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        vectors = pool(states, mask, self.pooling.mode)
        if self.pooling.normalize:
            vectors = F.normalize(vectors, p=2, dim=1)
        result: list[list[float]] = vectors.cpu().tolist()
        return result


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
