"""The composition root: every long-lived part, built once with its dependencies passed in.

``build_services`` wires the parts (nothing is connected by assigning attributes afterwards);
``Services.start`` migrates the database, then starts the usage ledger, the engine, the ingest workers
and the endpoint supervisor; ``Services.stop`` stops them in reverse. ``create_app`` (``app.py``) runs both
from the app's lifespan, ``modelport worker`` from its own loop, and the tests where they need them.

Callbacks that would make a cycle of constructors go through a value both sides get: the catalog
sets the worker pool's ``wake`` event when it queues a job; the endpoint service wakes the
supervisor it was given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from modelport.accounts.quotas import RateLimiter
from modelport.accounts.service import AccountService
from modelport.accounts.sessions import SessionSigner
from modelport.catalog.service import Catalog
from modelport.catalog.transfers import Transfers
from modelport.endpoints.adapters import DeploymentAdapters
from modelport.endpoints.events import Events
from modelport.endpoints.experiments import Experiments
from modelport.endpoints.lease import Lease
from modelport.endpoints.placement import RayPlacement, open_placement
from modelport.endpoints.rollout_driver import RolloutController
from modelport.endpoints.rollouts import Rollouts
from modelport.endpoints.routes import Routes
from modelport.endpoints.routing import EndpointRouting
from modelport.endpoints.serverless import ClusterServerless
from modelport.endpoints.service import EndpointService
from modelport.endpoints.supervisor import Supervisor
from modelport.endpoints.traffic import TrafficStats
from modelport.ingest import checker
from modelport.ingest.cleanup import collect_garbage
from modelport.ingest.multipart import PartStore
from modelport.ingest.pipeline import Pipeline
from modelport.ingest.sources.registry import open_sources
from modelport.ingest.uploads import Uploads
from modelport.jobs.states import JobType
from modelport.jobs.store import JobStore
from modelport.jobs.worker import JobHandler, Worker, WorkerPool
from modelport.metrics import Metrics, WorkerLoad
from modelport.serving.artifacts import ArtifactCache
from modelport.serving.observe import Observers
from modelport.serving.pool import EnginePool
from modelport.serving.service import InferenceService
from modelport.serving.timeline import Timeline
from modelport.serving.usage import UsageLedger
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore, DirectTransfer, open_blob_store
from modelport.storage.db.engine import Database, migrate

log = logging.getLogger(__name__)


@dataclass
class Serving:
    """Inference: the serverless engine processes and dedicated endpoints. Absent in ``modelport worker``."""

    engine: EnginePool
    inference: InferenceService
    endpoints: EndpointService
    supervisor: Supervisor
    routes: Routes
    events: Events
    routing: EndpointRouting
    experiments: Experiments  # A/B and shadow experiments on a route (Together v2)
    adapters: DeploymentAdapters  # LoRA adapters attached to a deployment (Together v2)
    rollouts: Rollouts  # moving a route's traffic between deployments in steps (Together v2)
    rollout_controller: RolloutController  # the thread that advances rollouts; runs with the supervisor
    timeline: Timeline  # each model's last hour of traffic, for the console's charts


@dataclass
class Housekeeping:
    """What idle workers do every ``GC_INTERVAL_S``: drop what failed ingests left behind, expired
    uploads, and the serving copies of deleted models."""

    settings: Settings
    db: Database
    blobs: BlobStore
    catalog: Catalog
    artifacts: ArtifactCache
    transfers: Transfers

    def __call__(self) -> None:
        collect_garbage(self.db, self.blobs, self.settings)
        self.artifacts.prune(self.catalog.artifact_ids())
        self.transfers.parts.prune()
        self.transfers.backfill_etags()


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    accounts: AccountService
    catalog: Catalog
    transfers: Transfers  # Together v2's signed-URL uploads and downloads
    uploads: Uploads
    artifacts: ArtifactCache
    worker: Callable[[str], Worker]  # a job worker by name: the pool's threads, or one a test runs in place
    pool: WorkerPool
    metrics: Metrics  # Prometheus, read by GET /metrics (``metrics.py``)
    usage: UsageLedger  # requests and tokens per account, model and day; written in batches
    serving: Serving | None
    supervise: bool = True
    _prepared: bool = field(default=False, repr=False)

    @property
    def live(self) -> Serving:
        """The serving parts; only a server built with ``serving=True`` asks for them."""
        if self.serving is None:
            raise RuntimeError("this process was built without serving (modelport worker)")
        return self.serving

    def prepare(self) -> None:
        """The database at the newest schema, and the bootstrap account if one is configured. Idempotent."""
        if self._prepared:
            return
        migrate(self.db.engine)
        s = self.settings
        if s.bootstrap_api_key and self.accounts.bootstrap(s.bootstrap_account, s.bootstrap_api_key):
            log.info("created account %r with the bootstrap API key", s.bootstrap_account)
        self._prepared = True

    def start(self) -> None:
        self.prepare()
        if self.serving:
            self.usage.start()
            # A server with models to serve starts its engine processes now, so that the first request
            # after a restart does not wait for torch to import; a new install starts them on demand.
            self.serving.engine.start(now=self.catalog.has_models())
        self.pool.start()
        if self.serving and self.supervise:
            self.serving.supervisor.start()
            self.serving.rollout_controller.start()

    def stop(self) -> None:
        if self.serving and self.supervise:
            self.serving.rollout_controller.stop()  # first: it moves traffic and scales deployments
            self.serving.supervisor.stop()
        self.pool.stop()
        if self.serving:
            self.serving.engine.stop()
            self.serving.inference.renderer.close()  # the chat-template worker processes
        self.usage.stop()  # after the engine: what finished while stopping is counted too
        self.db.dispose()


def build_services(
    settings: Settings, *, workers: int | None = None, serving: bool = True, supervise: bool = True
) -> Services:
    """Build every part; start nothing and touch the database not at all (``Services.start`` does).

    ``workers``: ingest worker threads (default ``settings.workers``; 0 for none). ``serving=False``
    leaves out the engine and endpoints (``modelport worker``); ``supervise=False`` builds the
    supervisor but never starts it (tests that drive ``reconcile`` themselves).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    blobs = open_blob_store(settings)
    metrics = Metrics(db)
    usage = UsageLedger(db, settings.usage_flush_interval_s)
    wake = threading.Event()  # set by the catalog when it queues a job; the pool's workers wait on it
    catalog = Catalog(settings, db, on_submit=wake.set)
    direct = blobs if isinstance(blobs, DirectTransfer) else None  # S3: parts go straight to the bucket
    parts = PartStore(settings.multipart_dir, settings.upload_ttl_s, direct)
    transfers = Transfers(settings, db, blobs, catalog, parts)
    pipeline = Pipeline(settings, db, blobs, open_sources(settings, parts, blobs), catalog.find_base)
    handlers: dict[str, JobHandler] = {JobType.MODEL_UPLOAD: pipeline.run, JobType.ADAPTER_UPLOAD: pipeline.run}
    jobs, artifacts = JobStore(db), ArtifactCache(settings.model_cache_dir, blobs)
    housekeeping = Housekeeping(settings, db, blobs, catalog, artifacts, transfers)

    def worker(name: str) -> Worker:
        return Worker(settings, jobs, handlers, name, housekeeping, metrics.jobs.stage_ended)

    count = settings.workers if workers is None else workers
    pool = WorkerPool([worker(f"w{i}") for i in range(count)], wake, warm_up=checker.warm_up)
    return Services(
        settings=settings,
        db=db,
        blobs=blobs,
        accounts=AccountService(db, SessionSigner.in_dir(settings.data_dir, settings.web_session_ttl_s)),
        catalog=catalog,
        transfers=transfers,
        uploads=Uploads(settings, db),
        artifacts=artifacts,
        worker=worker,
        pool=pool,
        metrics=metrics,
        usage=usage,
        serving=_serving(settings, db, blobs, catalog, artifacts, metrics, usage) if serving else None,
        supervise=supervise,
    )


def _serving(
    settings: Settings,
    db: Database,
    blobs: BlobStore,
    catalog: Catalog,
    artifacts: ArtifactCache,
    metrics: Metrics,
    usage: UsageLedger,
) -> Serving:
    placement = open_placement(settings)  # this host's processes, or a Ray cluster's actors
    events, stats = Events(db), TrafficStats()
    # Of several servers on one database, one supervises endpoints and drives rollouts at a time.
    lease = Lease(db, "controller", settings.controller_lease_s)
    # On a cluster, serverless models are served by engine actors there too (unless set to 0).
    remote = ClusterServerless(settings, placement) if isinstance(placement, RayPlacement) else None
    supervisor = Supervisor(settings, db, catalog, artifacts, placement, events, lease, remote)
    endpoints = EndpointService(settings, db, catalog, blobs, placement.inventory, on_change=supervisor.wake)
    supervisor.rescale = endpoints.rescale
    routes = Routes(db, endpoints, events, on_change=supervisor.wake)
    routing = EndpointRouting(settings, db, endpoints, routes, supervisor, catalog, artifacts, events, stats)
    engine = EnginePool(settings, remote)
    timeline = Timeline()
    inference = InferenceService(
        catalog,
        artifacts,
        engine,
        limiter=RateLimiter(settings.quota_requests_per_minute),
        routing=routing,
        observer=Observers(metrics.inference, usage, timeline),
    )
    # Scrapes ask each serverless engine process for its load, and read the endpoints' replicas.
    metrics.watch_serving(
        [lambda: [WorkerLoad.from_stats(label, stats) for label, stats in engine.worker_stats()]],
        supervisor.replica_loads,
    )
    experiments = Experiments(db, routes, events)
    endpoints.forgetters.append(experiments.forget_deployment)
    adapters = DeploymentAdapters(settings, db, catalog, supervisor, events)
    rollouts = Rollouts(db, routes, events, stats, supervisor)
    endpoints.forgetters.append(rollouts.forget_deployment)
    return Serving(
        engine,
        inference,
        endpoints,
        supervisor,
        routes,
        events,
        routing,
        experiments=experiments,
        adapters=adapters,
        rollouts=rollouts,
        rollout_controller=RolloutController(rollouts.driver, settings.rollout_interval_s, lambda: lease.holding),
        timeline=timeline,
    )
