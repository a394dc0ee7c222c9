"""Sentence embeddings: a transformers encoder plus the pooling its sentence-transformers config names."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modelport.serving.engine import Pooling


class Embedder:
    def __init__(self, model: nn.Module, pooling: Pooling, device: torch.device) -> None:
        self.model, self.pooling, self.device = model, pooling, device

    @classmethod
    def load(cls, path: Path, pooling: Pooling, device: torch.device, dtype: torch.dtype) -> Embedder:
        from transformers import AutoModel

        model: nn.Module = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True, trust_remote_code=False)
        model.to(device)
        model.eval()
        return cls(model, pooling, device)

    @torch.inference_mode()
    def embed(self, batch: list[list[int]]) -> list[list[float]]:
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
