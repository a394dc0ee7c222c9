"""``create_app(settings)``: the web app over the services (``services.py``), their start and stop in
its lifespan, the routers of each wire dialect and the error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from modelport import __version__
from modelport.api import errors
from modelport.api.gate import RequestGate
from modelport.api.metrics import RequestMetrics
from modelport.api.metrics import router as metrics_router
from modelport.api.native.keys import router as keys_router
from modelport.api.native.models import router as native_models_router
from modelport.api.native.timeline import router as timeline_router
from modelport.api.native.uploads import router as uploads_router
from modelport.api.native.usage import router as usage_router
from modelport.api.nebius.router import router as nebius_router
from modelport.api.openai.router import router as openai_router
from modelport.api.prefixes import RedundantV1Prefix
from modelport.api.slowclients import BodyDeadline
from modelport.api.together.endpoints import router as endpoints_router
from modelport.api.together.router import identity_router
from modelport.api.together.router import router as together_router
from modelport.api.together.v2 import router as together_v2_router
from modelport.api.together.v2 import transfer_router
from modelport.api.together.v2_adapters import router as together_adapters_router
from modelport.api.together.v2_endpoints import router as together_v2_endpoints_router
from modelport.api.together.v2_experiments import router as together_experiments_router
from modelport.api.together.v2_rollouts import router as together_rollouts_router
from modelport.api.together.v2_supported import router as together_supported_router
from modelport.services import Services, build_services
from modelport.settings import Settings
from modelport.web.errors import PAGES
from modelport.web.router import STATIC_DIR
from modelport.web.router import router as web_router

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    run_workers: bool = True,
    supervise: bool | None = None,
    services: Services | None = None,
) -> FastAPI:
    """``run_workers``: ingest jobs in this process; ``supervise``: run endpoint replicas (default: the
    same). ``services``: parts built by the caller (``settings`` and the flags are then theirs)."""
    parts = services or _build(settings or Settings(), run_workers, run_workers if supervise is None else supervise)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        parts.start()
        try:
            yield
        finally:
            parts.stop()

    app = FastAPI(title="modelport", version=__version__, lifespan=lifespan)
    app.state.services = parts  # what every request dependency reads (``api/deps.py``)
    errors.install(app, fallback=PAGES)  # the console's pages answer every path no API owns
    settings = parts.settings
    app.add_middleware(RequestGate, settings=settings)  # the key and the body's cap, before any body byte
    app.add_middleware(BodyDeadline, stall_s=settings.upload_stall_timeout_s)
    app.add_middleware(RequestMetrics, metrics=parts.metrics.http)  # outer: it sees every answer
    app.add_middleware(RedundantV1Prefix)  # outermost: /v1/v3/whoami is /v3/whoami before anything looks
    app.include_router(identity_router)
    app.include_router(metrics_router)
    app.include_router(together_router, prefix="/v1")
    app.include_router(together_v2_endpoints_router, prefix="/v2")
    app.include_router(together_experiments_router, prefix="/v2")
    app.include_router(together_adapters_router, prefix="/v2")
    app.include_router(together_rollouts_router, prefix="/v2")
    app.include_router(together_v2_router, prefix="/v2")  # last: its {model_id:path} routes match widely
    app.include_router(together_supported_router, prefix="/v2")
    app.include_router(transfer_router)
    app.include_router(openai_router, prefix="/v1")
    app.include_router(endpoints_router, prefix="/v1")
    app.include_router(nebius_router, prefix="/v0")
    app.include_router(uploads_router, prefix="/api/v1")
    app.include_router(keys_router, prefix="/api/v1")
    app.include_router(timeline_router, prefix="/api/v1")
    app.include_router(native_models_router, prefix="/api/v1")
    app.include_router(usage_router, prefix="/api/v1")
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _build(settings: Settings, run_workers: bool, supervise: bool) -> Services:
    return build_services(settings, workers=None if run_workers else 0, supervise=supervise)
