"""``FakeEngine``: the test double for ``Engine``. No weights are loaded and no torch is needed.

Generation replays the prompt's token ids backwards, one per ``token_delay_s``, and honours
``max_tokens``, stop token ids, cancellation and a cap on concurrent sequences, so the API layer and
the service can be tested for streaming, limits and disconnects quickly and deterministically.
Embeddings are unit vectors derived from the token ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncGenerator
from typing import Any

from modelport.serving.engine import Artifact, GenerationRequest, Pooling, TokenStep


class FakeEngine:
    name = "fake"

    def __init__(self, max_num_seqs: int = 8, token_delay_s: float = 0.0) -> None:
        self.max_num_seqs, self.token_delay_s = max_num_seqs, token_delay_s
        self.running = 0
        self.requests: list[GenerationRequest] = []
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "running": self.running}

    async def prepare(self, request: GenerationRequest) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_num_seqs)
        self.requests.append(request)
        async with self._slots:
            self.running += 1
            try:
                replay = list(reversed(request.prompt_ids))
                for i in range(request.params.max_tokens):
                    await asyncio.sleep(self.token_delay_s)
                    token = replay[i % len(replay)]
                    last = i + 1 == request.params.max_tokens
                    reason = "stop" if token in request.params.stop_token_ids else ("length" if last else None)
                    logprob = -0.5 if request.params.logprobs is not None else None
                    top = [(token, -0.5)][: request.params.logprobs] if request.params.logprobs else None
                    yield TokenStep(token, logprob, top, reason)
                    if reason:
                        return
            finally:
                self.running -= 1

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        vectors = []
        for ids in batch:
            digest = hashlib.sha256(repr(ids).encode()).digest()
            raw = [b - 127.5 for b in digest[:8]]
            norm = math.sqrt(sum(v * v for v in raw)) or 1.0
            vectors.append([v / norm for v in raw])
        return vectors
