"""Which engine answers a request: a deployment of the endpoint it names, or the server's own engine.

A request naming an endpoint (a route) goes to one of its live deployments, picked at random by the
traffic split (with A/B experiments applied, ``traffic.shares``), preferring deployments that can answer
right now; active shadow experiments copy it to their targets. A request naming a model or adapter goes
to a started deployment of that revision (for an adapter: one it is attached to first), or to the
shared engine. Every routed request is timed against its deployment (``traffic.MeteredEngine``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from sqlalchemy import select

from modelport.accounts.service import Principal
from modelport.catalog.service import Catalog
from modelport.endpoints.events import Events, Level
from modelport.endpoints.routes import LIVE, Routes
from modelport.endpoints.service import EndpointService
from modelport.endpoints.states import RUNNING_STATES
from modelport.endpoints.supervisor import Supervisor
from modelport.endpoints.traffic import MeteredEngine, Mirror, QpsBudget, TrafficStats, pick, sampled, shares
from modelport.errors import EndpointNotRunning, ModelportError
from modelport.ids import wire_deployment_id
from modelport.manifest import context_length_of
from modelport.serving.artifacts import ArtifactCache
from modelport.serving.engine import Artifact
from modelport.serving.service import Routed
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import DeploymentAdapter, Endpoint, Experiment, Route, utcnow

log = logging.getLogger(__name__)

SHADOW_ACTIVE = "SHADOW_EXPERIMENT_STATE_ACTIVE"
COMPARE_EVERY = 20  # mirrored requests between two shadow.compared events
COMPARE_WINDOW_S = 300.0
# Copies running on one shadow target at once: a slow shadow skips copies rather than queueing them
# without end (its own time and errors are what the experiment measures, not a backlog).
MAX_COPIES_IN_FLIGHT = 8


class EndpointRouting:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        endpoints: EndpointService,
        routes: Routes,
        supervisor: Supervisor,
        catalog: Catalog,
        artifacts: ArtifactCache,
        events: Events,
        stats: TrafficStats,
    ) -> None:
        self.settings, self.db, self.endpoints, self.routes, self.supervisor = (
            settings,
            db,
            endpoints,
            routes,
            supervisor,
        )
        self.catalog, self.artifacts, self.events, self.stats = catalog, artifacts, events, stats
        self._mirrored: dict[tuple[str, str], int] = {}  # (experiment, target) -> copies sent
        self.budget = QpsBudget()
        self._copies: dict[str, int] = {}  # shadow deployment -> copies running on it
        self._last_used: dict[str, float] = {}  # attachment -> when its last_used_at was written
        self._lock = threading.Lock()

    def mirrored(self, experiment_id: str, deployment_id: str) -> int:
        with self._lock:
            return self._mirrored.get((experiment_id, deployment_id), 0)

    # --- by the endpoint's name ---------------------------------------------------------------------
    def by_name(self, who: Principal, name: str) -> Routed | None:
        found = self.routes.find(who, name)
        if found is None:
            # A deployment's own full name (``acme/ep/blue``) or id reaches it directly, bypassing the split.
            endpoint = self.endpoints.find_for_request(who, name)
            return self._routed(endpoint, endpoint.name) if endpoint is not None else None
        route, rows, experiments = found
        deployments = {d.id: d for d in rows}
        live = {d.id for d in deployments.values() if d.traffic_mode == LIVE}
        weights = shares(route.traffic, live, experiments)
        if not weights:
            raise EndpointNotRunning(
                f"endpoint {route.name} sends no traffic to any deployment; deploy one or set its traffic split",
                param="model",
            )
        answering = {d: w for d, w in weights.items() if self._answers(deployments[d])}
        chosen = deployments[pick(answering) or pick(weights) or next(iter(weights))]
        return self._routed(chosen, route.name, self._mirrors(route, experiments, deployments, chosen))

    def _answers(self, deployment: Endpoint) -> bool:
        return deployment.state in RUNNING_STATES and self.supervisor.ready_replicas(deployment.id) > 0

    def _routed(self, deployment: Endpoint, name: str, mirrors: list[Mirror] | None = None) -> Routed:
        engine = self.supervisor.engine_for(deployment)  # a clear error when it cannot answer
        delay = float(self.settings.fault_delays.get(deployment.label, 0.0))
        metered = MeteredEngine(engine, deployment.id, self.stats, delay=delay, mirrors=mirrors or [])
        return Routed(deployment.model_id, deployment.revision_id, name, metered, wire_deployment_id(deployment.id))

    # --- shadow copies ------------------------------------------------------------------------------
    def _mirrors(
        self, route: Route, experiments: list[Experiment], deployments: dict[str, Endpoint], chosen: Endpoint
    ) -> list[Mirror]:
        mirrors = []
        for x in experiments:
            if x.kind != "shadow" or x.state != SHADOW_ACTIVE or not x.targets:
                continue
            sampling = x.source.get("endpoint", {}).get("sampling", {})
            if not sampled(sampling, None) or not self.budget.admit(x.id, sampling):
                continue
            for target in x.targets:
                deployment = deployments.get(target["target_deployment_id"])
                if deployment is None or deployment.id == chosen.id or not self._answers(deployment):
                    continue
                mirrors.append(self._mirror(route, x, deployment, chosen))
        return mirrors

    def _mirror(self, route: Route, x: Experiment, target: Endpoint, source: Endpoint) -> Mirror:
        model = self.catalog.model_at(target.model_id, target.revision_id)
        assert model is not None

        def artifact() -> Artifact:
            return self.artifacts.get(model, self.catalog.files(model))

        def done(experiment_id: str, deployment_id: str, seconds: float, ok: bool) -> None:
            self.stats.record(deployment_id, seconds, ok)
            with self._lock:
                self._copies[deployment_id] -= 1
                count = self._mirrored.get((experiment_id, deployment_id), 0) + 1
                self._mirrored[(experiment_id, deployment_id)] = count
            if count == 1 or count % COMPARE_EVERY == 0:
                self._compare(route.id, x.name, target, source, count)

        def admit() -> bool:
            """Counted from the copy's start to its ``done``: a request that fails before it generates
            never sends its copies, and so holds no place."""
            with self._lock:
                if self._copies.get(target.id, 0) >= MAX_COPIES_IN_FLIGHT:
                    return False
                self._copies[target.id] = self._copies.get(target.id, 0) + 1
                return True

        context = context_length_of(model.manifest, self.settings.max_model_len)
        engine = self.supervisor.engine_for(target)
        return Mirror(x.id, target.id, engine, artifact, context, done, admit)

    def _compare(self, route_id: str, experiment: str, target: Endpoint, source: Endpoint, count: int) -> None:
        """An event that sets the shadow's latency and errors beside its source's, over the last minutes."""
        mine, theirs = self.stats.summary(target.id, COMPARE_WINDOW_S), self.stats.summary(source.id, COMPARE_WINDOW_S)
        level = Level.WARN if mine.error_rate > theirs.error_rate else Level.INFO
        self.events.record(
            route_id,
            "shadow.compared",
            f"shadow experiment {experiment}: {count} copies sent to {target.label}; "
            f"{target.label} p50 {_ms(mine.p50)} p95 {_ms(mine.p95)} errors {mine.errors}/{mine.requests}, "
            f"{source.label} p50 {_ms(theirs.p50)} p95 {_ms(theirs.p95)} errors {theirs.errors}/{theirs.requests}",
            level=level,
            deployment_id=target.id,
        )

    # --- by model or adapter ------------------------------------------------------------------------
    def for_model(self, model_id: str, revision_id: str | None, adapter_id: str | None) -> Routed | None:
        """A started deployment serving this revision (for an adapter: one it is attached to, first)."""
        if adapter_id is not None:
            attached = self._attached(adapter_id, model_id, revision_id)
            if attached is not None:
                return attached
        endpoint = self.endpoints.started_for_model(model_id, revision_id)
        if endpoint is None:
            return None
        try:
            return self._routed(endpoint, endpoint.name)
        except ModelportError:
            return None  # restarting: the shared engine answers meanwhile

    def _attached(self, adapter_id: str, model_id: str, revision_id: str | None) -> Routed | None:
        """A started deployment of this base revision with the adapter attached: it runs the attachment's
        revision of the adapter (which shares that base revision, checked when it was attached)."""
        with self.db.read() as s:
            rows: list[Any] = list(
                s.execute(
                    select(DeploymentAdapter.id, DeploymentAdapter.revision_id, Endpoint)
                    .join(Endpoint, Endpoint.id == DeploymentAdapter.deployment_id)
                    .where(
                        DeploymentAdapter.adapter_model_id == adapter_id,
                        Endpoint.model_id == model_id,
                        Endpoint.revision_id == revision_id,
                    )
                ).all()
            )
        for attachment_id, adapter_revision, deployment in rows:
            if self._answers(deployment):
                routed = replace(self._routed(deployment, deployment.name), adapter_revision_id=adapter_revision)
                self._used(attachment_id)
                return routed
        return None

    def _used(self, attachment_id: str) -> None:
        """The adapter slots evict the least recently used: at most one write a minute per attachment."""
        now = time.monotonic()
        if now - self._last_used.get(attachment_id, 0.0) < 60:
            return
        self._last_used[attachment_id] = now
        with self.db.session() as s:  # its own short transaction, after routing (never inside another)
            row = s.get(DeploymentAdapter, attachment_id)
            if row is not None:
                row.last_used_at = utcnow()


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds is not None else "n/a"
