"""Engines by name: ``Settings.engine`` picks one. Adding a backend is a module and a line here.

``open_engine`` defers building the engine to its first request (``DeferredEngine``): a server that has
not yet served a serverless model has not imported torch (about 1.3 s and a few hundred MB), and one
that only ingests or routes to dedicated endpoints never does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

from modelport.serving.engine import Artifact, Engine, GenerationRequest, Pooling, TokenStep
from modelport.settings import Settings


def _torch(settings: Settings) -> Engine:
    from modelport.serving.engines.torch.engine import TorchEngine  # torch imports cost seconds

    return TorchEngine(settings)


def _fake(settings: Settings) -> Engine:
    from modelport.serving.engines.fake import FakeEngine

    return FakeEngine(max_num_seqs=settings.max_num_seqs)


ENGINES: dict[str, Callable[[Settings], Engine]] = {"transformers": _torch, "fake": _fake}


def open_engine(settings: Settings) -> Engine:
    factory = ENGINES[settings.engine]
    return DeferredEngine(settings.engine, lambda: factory(settings))


class DeferredEngine:
    """An ``Engine`` built, and started if it was asked to be, when the first request needs it.

    Building imports the backend (torch), so it runs in a thread, never on the event loop; concurrent
    first requests build it once.
    """

    def __init__(self, name: str, build: Callable[[], Engine]) -> None:
        self.name, self._build = name, build
        self._engine: Engine | None = None
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._started = True
            if self._engine is not None:
                self._engine.start()

    def stop(self) -> None:
        with self._lock:
            self._started = False
            if self._engine is not None:
                self._engine.stop()

    def stats(self) -> dict[str, Any]:
        engine = self._engine
        return engine.stats() if engine is not None else {"engine": self.name, "built": False, "models": {}}

    def built(self) -> Engine:
        """The real engine, built now if it was not yet (blocking: call it off the event loop)."""
        with self._lock:
            if self._engine is None:
                engine = self._build()
                if self._started:
                    engine.start()
                self._engine = engine
            return self._engine

    async def _ready(self) -> Engine:
        return self._engine if self._engine is not None else await asyncio.to_thread(self.built)

    async def prepare(self, request: GenerationRequest) -> None:
        await (await self._ready()).prepare(request)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        stream = (await self._ready()).generate(request)
        try:
            async for step in stream:
                yield step
        finally:
            await stream.aclose()  # closing early must reach the engine: it frees the sequence's row

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        return await (await self._ready()).embed(model, batch, pooling)
