"""``create_app(settings)``: build the services once, mount the routers, start the workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from modelport import __version__
from modelport.accounts.quotas import RateLimiter
from modelport.accounts.service import AccountService
from modelport.accounts.sessions import SessionSigner
from modelport.api import errors
from modelport.api.gate import RequestGate
from modelport.api.native.keys import router as keys_router
from modelport.api.native.models import router as native_models_router
from modelport.api.native.uploads import router as uploads_router
from modelport.api.nebius.router import router as nebius_router
from modelport.api.openai.router import router as openai_router
from modelport.api.slowclients import BodyDeadline
from modelport.api.together.endpoints import router as endpoints_router
from modelport.api.together.router import identity_router
from modelport.api.together.router import router as together_router
from modelport.catalog.service import Catalog
from modelport.endpoints import hardware
from modelport.endpoints.routing import EndpointRouting
from modelport.endpoints.service import EndpointService
from modelport.endpoints.supervisor import Supervisor
from modelport.ingest.uploads import Uploads
from modelport.jobs.worker import WorkerPool
from modelport.serving.artifacts import ArtifactCache
from modelport.serving.engines import open_engine
from modelport.serving.service import InferenceService
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore, open_blob_store
from modelport.storage.db.engine import Database, migrate
from modelport.web.router import STATIC_DIR
from modelport.web.router import router as web_router

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    accounts: AccountService
    catalog: Catalog


def build_services(settings: Settings) -> Services:
    """Open storage, apply migrations and bootstrap the first account. Shared by serve and worker."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    migrate(db.engine)
    accounts = AccountService(db, SessionSigner.in_dir(settings.data_dir, settings.web_session_ttl_s))
    if settings.bootstrap_api_key and accounts.bootstrap(settings.bootstrap_account, settings.bootstrap_api_key):
        log.info("created account %r with the bootstrap API key", settings.bootstrap_account)
    return Services(settings, db, open_blob_store(settings), accounts, Catalog(settings, db))


def create_app(settings: Settings | None = None, *, run_workers: bool = True, supervise: bool | None = None) -> FastAPI:
    """``run_workers``: ingest jobs in this process; ``supervise``: run endpoint replicas (default: the same)."""
    settings = settings or Settings()
    services = build_services(settings)
    pool = WorkerPool(settings, services.db, services.blobs) if run_workers else None
    if pool:
        services.catalog.on_submit = pool.wake
    engine = open_engine(settings)
    artifacts = ArtifactCache(settings.model_cache_dir, services.blobs)
    inference = InferenceService(
        services.catalog, artifacts, engine, limiter=RateLimiter(settings.quota_requests_per_minute)
    )
    inventory = hardware.detect(settings.endpoint_memory_bytes)
    endpoints = EndpointService(settings, services.db, services.catalog, services.blobs, inventory)
    supervisor = Supervisor(settings, services.db, services.catalog, artifacts, inventory)
    endpoints.on_change = supervisor.wake
    inference.routing = EndpointRouting(endpoints, supervisor)
    supervise = run_workers if supervise is None else supervise

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if pool:
            pool.start()
        if supervise:
            supervisor.start()
        try:
            yield
        finally:
            if supervise:
                supervisor.stop()
            if pool:
                pool.stop()
            engine.stop()
            inference.renderer.close()  # the chat-template worker processes
            services.db.dispose()

    app = FastAPI(title="modelport", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.services = services
    app.state.accounts = services.accounts
    app.state.catalog = services.catalog
    app.state.inference = inference
    app.state.endpoints = endpoints
    app.state.uploads = Uploads(settings, services.db)
    app.state.supervisor = supervisor
    errors.install(app)
    app.add_middleware(RequestGate, settings=settings)  # the key and the body's cap, before any body byte
    app.add_middleware(BodyDeadline, stall_s=settings.upload_stall_timeout_s)
    app.include_router(identity_router)
    app.include_router(together_router, prefix="/v1")
    app.include_router(openai_router, prefix="/v1")
    app.include_router(endpoints_router, prefix="/v1")
    app.include_router(nebius_router, prefix="/v0")
    app.include_router(uploads_router, prefix="/api/v1")
    app.include_router(keys_router, prefix="/api/v1")
    app.include_router(native_models_router, prefix="/api/v1")
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
