"""What a deployment replica's Ray actor runs, on whichever node Ray placed it.

The actor's constructor returns at once and a thread does the work, so ``status`` answers while the
model loads: fetch the model's files from the blob store into this node's cache (``ArtifactCache.localize``,
never a path on the API server's disk), build the engine, preload the model, then serve the engine
protocol on a TCP port of this node. Requests must carry the token the actor was created with
(``ipc.TcpAddress``); every artifact a request names is fetched into this node's cache the same way,
so adapters attached to the deployment reach the node from the store too.

Storage credentials are the node's own (``MODELPORT_S3_*`` or boto3's chain in the environment of
``ray start``): the API server sends the store's address, never its keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import traceback
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelport.serving.artifacts import ArtifactCache
from modelport.serving.engine import Artifact, Engine, GenerationRequest, Pooling, Preloading, TokenStep
from modelport.serving.host import EngineSpec
from modelport.serving.ipc import EngineServer, TcpAddress
from modelport.settings import Settings
from modelport.storage.blobs import open_blob_store

log = logging.getLogger(__name__)

# What the API server sends of its blob store: where it is, not how to sign in.
STORE_FIELDS = ("blob_url", "s3_endpoint_url", "s3_region")


class LocalizingEngine:
    """An engine whose requests' artifacts are fetched into this node's cache before they run."""

    def __init__(self, engine: Engine, cache: ArtifactCache) -> None:
        self.engine, self.cache = engine, cache
        self.name = engine.name

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    async def _local(self, request: GenerationRequest) -> GenerationRequest:
        base = await asyncio.to_thread(self.cache.localize, request.base)
        adapter = await asyncio.to_thread(self.cache.localize, request.adapter) if request.adapter else None
        return replace(request, base=base, adapter=adapter)

    async def prepare(self, request: GenerationRequest) -> None:
        await self.engine.prepare(await self._local(request))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        stream = self.engine.generate(await self._local(request))
        try:
            async for step in stream:
                yield step
        finally:
            await stream.aclose()  # closing this one early cancels the engine's sequence

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        return await self.engine.embed(await asyncio.to_thread(self.cache.localize, model), batch, pooling)


class ReplicaHost:
    """The body of a replica actor (``agent.py`` wraps it with ``ray.remote``)."""

    def __init__(self, spec: dict[str, Any], token: str, store: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"state": "loading", "pid": os.getpid(), "host": _node_ip(), "node": _node_id()}
        self._token = token
        threading.Thread(target=self._run, args=(spec, store), name="replica", daemon=True).start()

    def status(self) -> dict[str, Any]:
        """``state`` (loading, ready, failed), and once ready ``host``, ``port`` and ``token``."""
        with self._lock:
            return dict(self._status)

    def _set(self, **values: Any) -> None:
        with self._lock:
            self._status.update(values)

    def _run(self, spec_json: dict[str, Any], store: dict[str, Any]) -> None:
        try:
            spec = EngineSpec.from_json(spec_json)
            # OMP_NUM_THREADS (CUDA_VISIBLE_DEVICES is Ray's), before torch starts its threads.
            os.environ.update(spec_json.get("env") or {})
            node = Settings(**{k: v for k, v in store.items() if k in STORE_FIELDS})
            cache = ArtifactCache(node.node_cache_dir / "models", open_blob_store(node))
            engine = self._engine(spec, node.node_cache_dir, cache)
            address = TcpAddress(self._status["host"], 0, self._token)
            server = EngineServer(engine, address)

            def ready() -> None:
                self._set(state="ready", port=server.port, token=self._token)
                log.info("replica ready on %s:%d", address.host, server.port)

            asyncio.run(server.serve(ready))
        except BaseException as e:  # the supervisor reads this, and starts another
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            log.exception("replica failed")
            self._set(state="failed", error=last)

    @staticmethod
    def _engine(spec: EngineSpec, root: Path, cache: ArtifactCache) -> LocalizingEngine:
        from modelport.serving.engines import ENGINES  # torch: only on the node, only here

        settings = Settings(**{**spec.settings, "data_dir": root})
        engine = LocalizingEngine(ENGINES[settings.engine](settings), cache)
        engine.start()
        if spec.model is not None and spec.pooling is None and isinstance(engine.engine, Preloading):
            engine.engine.preload(cache.localize(spec.model), spec.context_length)
        return engine


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return ""


def _node_ip() -> str:
    """This node's address as Ray knows it, which the API servers can reach."""
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # outside Ray (a unit test): this host's name
        return socket.gethostbyname(socket.gethostname())
