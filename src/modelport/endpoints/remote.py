"""``RemoteEngine``: the ``Engine`` interface over HTTP to one replica process (``replica.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from modelport.endpoints.wire import artifact_to_json, pooling_to_json, request_to_json, step_from_json
from modelport.errors import EngineFailed, EngineOverloaded
from modelport.serving.engine import Artifact, GenerationRequest, Pooling, TokenStep


def _raise(body: dict[str, Any]) -> None:
    err = body.get("error") or {}
    message = str(err.get("message") or "the endpoint replica failed")
    if err.get("code") == "engine_overloaded":
        raise EngineOverloaded(message)
    raise EngineFailed(message)


class RemoteEngine:
    name = "replica"

    def __init__(self, url: str) -> None:
        self.url = url
        self.in_flight = 0
        # No read timeout: a long generation streams for as long as it takes.
        self._client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0, read=None))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "url": self.url, "in_flight": self.in_flight}

    async def prepare(self, request: GenerationRequest) -> None:
        pass  # the replica loaded its model before it reported ready

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        self.in_flight += 1
        try:
            async with self._client.stream("POST", "/generate", json=request_to_json(request)) as resp:
                if resp.status_code != 200:
                    _raise(json.loads(await resp.aread() or b"{}"))
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        _raise(item)
                    yield step_from_json(item)
        except httpx.HTTPError as e:
            raise EngineFailed(f"the endpoint replica stopped answering ({type(e).__name__}); retry") from None
        finally:
            self.in_flight -= 1

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        body = {"model": artifact_to_json(model), "batch": batch, "pooling": pooling_to_json(pooling)}
        self.in_flight += 1
        try:
            resp = await self._client.post("/embed", json=body)
        except httpx.HTTPError as e:
            raise EngineFailed(f"the endpoint replica stopped answering ({type(e).__name__}); retry") from None
        finally:
            self.in_flight -= 1
        if resp.status_code != 200:
            _raise(resp.json())
        vectors: list[list[float]] = resp.json()["vectors"]
        return vectors

    async def aclose(self) -> None:
        await self._client.aclose()
