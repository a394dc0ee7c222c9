"""One endpoint replica: a process of its own running the embedded engine behind a loopback HTTP API.

Started by the supervisor as ``modelport replica --spec FILE``. A crash here (out of memory, a fault in
native code, SIGKILL) ends this process only; the API server sees the exit and restarts it or marks the
endpoint ERROR. The replica loads its model before it answers ``/health``, and exits if its parent
(the API server) goes away.

Routes (loopback only, no auth: the port is known to the parent alone):
``POST /generate`` streams newline-delimited ``TokenStep`` JSON; ``POST /embed``; ``GET /health``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from modelport.endpoints.wire import artifact_from_json, request_from_json, step_to_json
from modelport.errors import ModelportError
from modelport.serving.engine import Pooling
from modelport.settings import Settings

log = logging.getLogger(__name__)


def _error(e: Exception) -> dict[str, Any]:
    if isinstance(e, ModelportError):
        return {"error": {"code": e.code, "message": e.message, "status": e.status_code}}
    return {"error": {"code": "engine_error", "message": f"{type(e).__name__}", "status": 500}}


def create_replica_app(spec: dict[str, Any]) -> FastAPI:
    from modelport.serving.engines.torch.engine import TorchEngine

    settings = Settings(
        data_dir=Path(spec["data_dir"]),
        engine_device=spec["device"],
        engine_memory_bytes=int(spec["memory_bytes"]),
        max_num_seqs=int(spec.get("max_num_seqs", 32)),
        max_loras=int(spec.get("max_loras", 16)),
    )
    engine = TorchEngine(settings)
    model = artifact_from_json(spec["model"])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if spec.get("pooling") is None:
            engine.preload(model, int(spec["context_length"]))  # /health answers only once this is done
        yield
        engine.stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ready": True, "pid": os.getpid(), "stats": engine.stats()}

    @app.post("/generate")
    async def generate(request: Request) -> StreamingResponse:
        gen = engine.generate(request_from_json(await request.json()))

        async def lines() -> AsyncIterator[str]:
            try:
                async for step in gen:
                    yield json.dumps(step_to_json(step)) + "\n"
            except Exception as e:  # the stream has started: report in-band
                yield json.dumps(_error(e)) + "\n"
            finally:
                await gen.aclose()  # the API server hung up: frees the sequence's row

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/embed")
    async def embed(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            vectors = await engine.embed(artifact_from_json(body["model"]), body["batch"], Pooling(**body["pooling"]))
        except Exception as e:
            err = _error(e)
            return JSONResponse(err, status_code=err["error"]["status"])
        return JSONResponse({"vectors": vectors})

    return app


def watch_parent(parent: int) -> None:
    """Exit when the API server that started us is gone, so no replica outlives its supervisor."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run(spec_path: Path, port: int) -> None:
    import uvicorn

    spec = json.loads(spec_path.read_text())
    watch_parent(int(spec["parent_pid"]))
    app = create_replica_app(spec)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
