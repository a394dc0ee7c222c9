"""Keeps each endpoint's replica processes matching what its row asks for.

A thread in ``modelport serve`` reconciles every ``interval`` seconds (and when woken by a change):
it launches missing replicas, marks the endpoint STARTED once every replica has loaded its model,
restarts replicas that died (up to ``replica_max_restarts``, then ERROR with the reason and the
hardware released), stops replicas of endpoints asked to stop, deleted, or idle past their
``inactive_timeout``, and on a server restart brings started endpoints back up.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from modelport.catalog.service import Catalog
from modelport.endpoints.autoscale import Policy, Pressure, decide
from modelport.endpoints.events import Events, Level
from modelport.endpoints.hardware import HardwareConfig, Inventory
from modelport.endpoints.service import replica_count
from modelport.endpoints.states import RUNNING_STATES, EndpointState, move
from modelport.errors import EndpointNotRunning, EngineOverloaded, ModelportError
from modelport.forkserver import ForkFailed
from modelport.manifest import ModelType, context_length_of
from modelport.serving.artifacts import ArtifactCache
from modelport.serving.engine import Artifact, Pooling
from modelport.serving.host import (
    EngineProcess,
    EngineSpec,
    engine_settings,
    exit_reason,
    fork_engine,
    log_tail,
    spawn,
    terminate,
)
from modelport.serving.ipc import EngineClient, probe
from modelport.serving.service import read_pooling
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Model, utcnow

log = logging.getLogger(__name__)

STABLE_S = 600.0  # replicas up this long forgive earlier crashes
DRAIN_S = 60.0  # a replica scaled away or stopped may take this long to answer what it has in flight
# ...and lives at least this long: a request routed to it just before may still be tokenizing, not yet
# counted in flight.
DRAIN_GRACE_S = 5.0
WAKE_RETRY_S = 5.0  # between two tries to wake a deployment from zero (hardware may be taken meanwhile)


def replica_spec(
    endpoint: Endpoint,
    model: Model,
    artifact: Artifact,
    settings: Settings,
    config: HardwareConfig,
    index: int,
    pooling: Pooling | None,
    parent_pid: int,
) -> EngineSpec:
    """Replica ``index`` of ``endpoint`` on ``config``, from what its reservation holds. No I/O.

    A replica is an engine process like a serverless worker, with its own device and memory budget, that
    loads ``artifact`` before it answers."""
    device, memory, env = _placement(config, endpoint.reservation or {}, index)
    return EngineSpec(
        parent_pid=parent_pid,
        settings=engine_settings(settings, engine_device=device, engine_memory_bytes=memory, engine_workers=1),
        model=artifact,
        context_length=context_length_of(model.manifest, settings.max_model_len),
        pooling=pooling,
        env=env,
    )


def _placement(config: HardwareConfig, held: dict[str, Any], index: int) -> tuple[str, int, dict[str, str]]:
    """Device, memory budget and environment of replica ``index``: on GPUs, its slice of the reserved ones."""
    if config.is_cpu:
        return "cpu", config.memory_bytes, {"OMP_NUM_THREADS": str(config.gpu_count)}
    per = int(held.get("gpus_per_replica", config.gpu_count))
    gpus = held.get("gpus", [])[index * per : (index + 1) * per]
    return "cuda", int(config.memory_bytes * 0.9), {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


@dataclass
class Replica:
    endpoint_id: str
    index: int
    proc: EngineProcess
    socket: Path
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    ready_at: float = 0.0
    engine: EngineClient | None = None


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica process as ``/metrics`` shows it: whether it answers yet, and the sequences the API
    server has in flight on it (generating or queued there)."""

    endpoint_id: str
    index: int
    ready: bool
    in_flight: int


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        catalog: Catalog,
        artifacts: ArtifactCache,
        inventory: Inventory,
        events: Events | None = None,
    ) -> None:
        self.settings, self.db, self.catalog, self.artifacts, self.inventory = (
            settings,
            db,
            catalog,
            artifacts,
            inventory,
        )
        self.events = events or Events(db)
        # The autoscaler's moves go through the endpoint service, which re-reserves hardware for them.
        self.rescale: Callable[[str, int], None] = lambda endpoint_id, replicas: None
        self.replicas: dict[str, list[Replica]] = {}
        # Replicas scaled away or stopped, finishing their requests: (replica, since, grace in seconds).
        self._retired: list[tuple[Replica, float, float]] = []
        self._pressure: dict[str, Pressure] = {}
        self._waking: set[str] = set()  # scaled to zero, woken by a request, no replica answering yet
        self._woken: dict[str, float] = {}  # when a request last tried to wake each deployment
        self.interval = 0.5
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._sockets: Path | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="endpoint-supervisor", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Server shutdown: stop every replica but keep each endpoint's state, so it comes back up."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for replicas in self.replicas.values():
                for r in replicas:
                    terminate(r.proc)
            self.replicas.clear()
            for r, _, _ in self._retired:
                terminate(r.proc)
            self._retired.clear()
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)

    def ready_replicas(self, endpoint_id: str) -> int:
        with self._lock:
            return sum(1 for r in self.replicas.get(endpoint_id, []) if r.ready)

    def replica_loads(self) -> list[ReplicaLoad]:
        """Every endpoint's replicas, launched or ready, with their load; read at each metrics scrape."""
        with self._lock:
            running = [(endpoint_id, list(replicas)) for endpoint_id, replicas in list(self.replicas.items())]
        return [
            ReplicaLoad(endpoint_id, r.index, r.ready, r.engine.in_flight if r.engine is not None else 0)
            for endpoint_id, replicas in running
            for r in replicas
        ]

    # --- routing -----------------------------------------------------------------------------------
    def engine_for(self, endpoint: Endpoint) -> EngineClient:
        """The least-loaded ready replica of a started endpoint (or of one still starting some replicas,
        scaling up or replacing a crashed one, while others answer)."""
        with self._lock:
            ready = [r.engine for r in self.replicas.get(endpoint.id, []) if r.ready and r.engine is not None]
        if not ready and endpoint.id in self._waking and endpoint.state in RUNNING_STATES:
            raise EngineOverloaded(f"endpoint {endpoint.name} is scaling up from zero replicas; retry shortly")
        if endpoint.state != EndpointState.STARTED and not (ready and endpoint.state in RUNNING_STATES):
            raise EndpointNotRunning(
                f"endpoint {endpoint.name} is {endpoint.state}"
                + (f" ({endpoint.error})" if endpoint.error else "")
                # Said the same to every interface: the CLI's hint, the console's page and the API docs
                # each name their own way to start it (code endpoint_not_running).
                + "; it serves requests once it is started",
                param="model",
            )
        if not ready:
            if endpoint.replicas == 0:  # scaled to zero: this request wakes it
                self._wake_from_zero(endpoint)
                raise EngineOverloaded(f"endpoint {endpoint.name} is scaling up from zero replicas; retry shortly")
            raise EngineOverloaded(f"endpoint {endpoint.name} has no ready replica right now (restarting); retry")
        self._touch(endpoint.id)
        return min(ready, key=lambda e: e.in_flight)

    def _wake_from_zero(self, endpoint: Endpoint) -> None:
        # Each request to a sleeping deployment lands here: one try every few seconds, not one per request.
        now = time.monotonic()
        if now - self._woken.get(endpoint.id, 0.0) < WAKE_RETRY_S:
            return
        self._woken[endpoint.id] = now
        self._waking.add(endpoint.id)  # until a replica answers: retry (503), not "not running" (400)
        self._touch(endpoint.id, force=True)
        try:
            self.rescale(endpoint.id, 1)
        except ModelportError as e:
            self.events.record(endpoint.route_id, "deployment.scale_failed", str(e), level=Level.WARN)
        self.wake()

    def _touch(self, endpoint_id: str, force: bool = False) -> None:
        # At most one write per endpoint every 10 s: inactive_timeout counts in minutes.
        now = time.monotonic()
        if force or now - self._touched.get(endpoint_id, 0.0) > 10:
            self._touched[endpoint_id] = now
            with self.db.session() as s:
                endpoint = s.get(Endpoint, endpoint_id)
                if endpoint is not None:
                    endpoint.last_request_at = utcnow()

    # --- reconciliation ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.reconcile()
            except Exception:
                log.exception("endpoint supervisor pass failed; retrying")
            self._wake.wait(self.interval)
            self._wake.clear()

    def reconcile(self) -> None:
        self._drain()
        with self.db.session() as s:
            endpoints = {e.id: e for e in s.scalars(select(Endpoint))}
        for endpoint_id in list(self.replicas):
            if endpoint_id not in endpoints:  # deleted: stop its replicas, drop their specs and logs
                self._stop_replicas(endpoint_id)
                shutil.rmtree(self.settings.data_dir / "endpoints" / endpoint_id, ignore_errors=True)
        for endpoint in endpoints.values():
            if self._stopping.is_set():
                return
            try:
                self._reconcile_one(endpoint)
            except Exception:  # one deployment's trouble must not leave every other one unsupervised
                log.exception("endpoint %s: supervisor pass failed; retrying", endpoint.name)

    def _reconcile_one(self, endpoint: Endpoint) -> None:
        if endpoint.desired == EndpointState.STARTED and endpoint.state in RUNNING_STATES:
            if self._idle_too_long(endpoint):
                log.info("endpoint %s idle for %s min: stopping", endpoint.name, endpoint.inactive_timeout)
                self._move(endpoint, EndpointState.STOPPING)
                return
            self._keep_running(endpoint)
        elif endpoint.state in (EndpointState.STOPPING, *RUNNING_STATES):
            self._stop_replicas(endpoint.id)
            if self._draining(endpoint.id):  # STOPPING until its replicas have answered what they hold
                if endpoint.state != EndpointState.STOPPING:
                    self._move(endpoint, EndpointState.STOPPING)
            else:
                self._move(endpoint, EndpointState.STOPPED)

    def _idle_too_long(self, endpoint: Endpoint) -> bool:
        if not endpoint.inactive_timeout or endpoint.state != EndpointState.STARTED:
            return False
        since = endpoint.last_request_at or endpoint.updated_at
        return utcnow() - since > timedelta(minutes=endpoint.inactive_timeout)

    def _keep_running(self, endpoint: Endpoint) -> None:
        replicas = self.replicas.setdefault(endpoint.id, [])
        for r in list(replicas):
            code = r.proc.poll()
            if code is not None:
                replicas.remove(r)
                r.socket.unlink(missing_ok=True)
                if not self._crashed(endpoint, r, code):
                    return
            elif not r.ready:
                self._check_ready(endpoint, r)
        self._autoscale(endpoint, replicas)
        want = replica_count(endpoint)
        while len(replicas) > want:  # scaled down: it stops taking requests, and ends once it has answered
            with self._lock:
                extra = max(replicas, key=lambda r: r.index)
                replicas.remove(extra)
                self._retired.append((extra, time.monotonic(), DRAIN_GRACE_S))
        if len(replicas) < want and endpoint.state == EndpointState.STARTED and not any(r.ready for r in replicas):
            # Nothing answers (a server restart): say so before the launch, which may wait for the fork server.
            self._move(endpoint, EndpointState.STARTING)
        while len(replicas) < want:
            # The lowest free index: a replacement takes the dead replica's GPUs, never a live one's.
            index = min(set(range(want)) - {r.index for r in replicas})
            replicas.append(self._launch(endpoint, index))
        all_ready = len(replicas) == want and all(r.ready for r in replicas)
        if all_ready and endpoint.restarts and all(time.monotonic() - r.ready_at > STABLE_S for r in replicas):
            # The crash budget counts crashes close together only.
            self._move(endpoint, EndpointState(endpoint.state), restarts=0)
        wanted_state = EndpointState.STARTED if all_ready else EndpointState.STARTING
        if endpoint.state != wanted_state:
            self._move(endpoint, wanted_state)

    def _crashed(self, endpoint: Endpoint, replica: Replica, code: int) -> bool:
        """Count the crash; False when this pass must leave the endpoint: it failed for good, or moved meanwhile."""
        reason = exit_reason(code)
        restarts = endpoint.restarts + 1
        log.warning("endpoint %s replica %d %s (crash %d)", endpoint.name, replica.index, reason, restarts)
        if restarts > self.settings.replica_max_restarts:
            self._stop_replicas(endpoint.id)
            tail = log_tail(replica.log_path)
            error = f"replica {reason} {restarts} times" + (f"; last output: {tail}" if tail else "")
            self._move(endpoint, EndpointState.ERROR, error=error, restarts=restarts)
            return False
        return self._move(endpoint, EndpointState.STARTING, restarts=restarts)

    def _check_ready(self, endpoint: Endpoint, replica: Replica) -> None:
        if probe(replica.socket) is not None:  # it answers only once its model is loaded
            label = f"endpoint {endpoint.name} replica {replica.index}"
            client = EngineClient(replica.socket, self.settings.engine, label)
            replica.ready, replica.ready_at, replica.engine = True, time.monotonic(), client
            self._waking.discard(endpoint.id)
            log.info("endpoint %s replica %d ready", endpoint.name, replica.index)
        elif time.monotonic() - replica.started > self.settings.replica_start_timeout_s:
            log.warning("endpoint %s replica %d did not start in time", endpoint.name, replica.index)
            terminate(replica.proc)

    def _launch(self, endpoint: Endpoint, index: int) -> Replica:
        model = self.catalog.model_at(endpoint.model_id, endpoint.revision_id)
        assert model is not None, "a model with endpoints cannot be deleted"
        artifact = self.artifacts.get(model, self.catalog.files(model))
        config = next(c for c in self.inventory.configs({}) if c.id == endpoint.hardware)
        pooling = read_pooling(artifact.path) if model.type == ModelType.EMBEDDING else None
        spec = replica_spec(endpoint, model, artifact, self.settings, config, index, pooling, os.getpid())
        return self._spawn(endpoint, index, spec)

    def _spawn(self, endpoint: Endpoint, index: int, spec: EngineSpec) -> Replica:
        """Start the replica's engine process; its spec and log live in the endpoint's folder."""
        folder = self.settings.data_dir / "endpoints" / endpoint.id
        folder.mkdir(parents=True, exist_ok=True)
        # A name of its own per launch: a replacement must never unlink a live replica's socket.
        sock = self._socket_dir() / f"{endpoint.id}-{index}-{uuid.uuid4().hex[:8]}.sock"
        log_path, spec_path = folder / f"replica-{index}.log", folder / f"replica-{index}.json"
        proc: EngineProcess
        try:
            # Forked from the fork server, which has torch imported: milliseconds, not seconds.
            proc = fork_engine(spec, spec_path, sock, log_path, timeout=self.settings.replica_start_timeout_s)
        except ForkFailed as e:
            log.warning("endpoint %s: %s; starting replica %d as a program instead", endpoint.name, e, index)
            proc = spawn(spec, spec_path, sock, log_path)
        log.info("endpoint %s: launched replica %d (pid %d)", endpoint.name, index, proc.pid)
        return Replica(endpoint.id, index, proc, sock, log_path)

    def _socket_dir(self) -> Path:
        # Unix socket paths are short (108 bytes): a private folder of their own under /tmp.
        if self._sockets is None:
            self._sockets = Path(tempfile.mkdtemp(prefix="modelport-replicas-"))
        return self._sockets

    def _stop_replicas(self, endpoint_id: str) -> None:
        """Stop taking requests; each replica ends once its requests are answered (``_drain``)."""
        with self._lock:
            replicas = self.replicas.pop(endpoint_id, [])
            # No grace: a stopped endpoint takes no new request (its state says so before this).
            self._retired.extend((r, time.monotonic(), 0.0) for r in replicas)
        self._drain()

    def _draining(self, endpoint_id: str) -> bool:
        with self._lock:
            return any(r.endpoint_id == endpoint_id for r, _, _ in self._retired)

    def _drain(self) -> None:
        """End retired replicas with nothing in flight, or that took longer than ``DRAIN_S`` to finish."""
        now = time.monotonic()
        with self._lock:
            done = [
                (r, at, grace)
                for r, at, grace in self._retired
                if r.engine is None
                or (r.engine.in_flight == 0 and now - at >= grace)
                or now - at > DRAIN_S
                or r.proc.poll() is not None
            ]
            self._retired = [item for item in self._retired if item not in done]
        for r, _, _ in done:
            terminate(r.proc)
            r.socket.unlink(missing_ok=True)

    def _autoscale(self, endpoint: Endpoint, replicas: list[Replica]) -> None:
        """Move the deployment's replica count with its load (``autoscale.py``); hardware permitting."""
        if endpoint.state != EndpointState.STARTED:
            return
        policy = Policy.of(endpoint.min_replicas, endpoint.max_replicas, endpoint.max_concurrent, endpoint.autoscaling)
        in_flight = sum(r.engine.in_flight for r in replicas if r.engine is not None)
        since = endpoint.last_request_at or endpoint.updated_at
        idle_s = (utcnow() - since).total_seconds()
        pressure = self._pressure.setdefault(endpoint.id, Pressure())
        current = replica_count(endpoint)
        wanted = decide(policy, current, in_flight, idle_s, pressure, time.monotonic())
        if wanted == current:
            return
        try:
            self.rescale(endpoint.id, wanted)
        except ModelportError as e:
            self.events.record(
                endpoint.route_id, "deployment.scale_failed", str(e), level=Level.WARN, deployment_id=endpoint.id
            )
            return
        endpoint.replicas = wanted
        self.events.record(
            endpoint.route_id,
            "deployment.scaled",
            f"{endpoint.label}: {current} -> {wanted} replicas ({in_flight} requests in flight)",
            deployment_id=endpoint.id,
        )

    def _move(
        self, seen: Endpoint, to: EndpointState, *, error: str | None = None, restarts: int | None = None
    ) -> bool:
        """Move the endpoint's row, and this pass's copy ``seen``, unless the row left the state this pass saw.

        A user's request may have moved it since (stopped, or started again after a stop): then the next
        pass decides, from the row as it is. False when the row was left alone.
        """
        seen_state = seen.state
        with self.db.session() as s:
            row = s.get(Endpoint, seen.id)
            if row is None:  # deleted: the next pass stops its replicas
                return False
            if row.state != seen.state:
                log.info("endpoint %s is now %s, not %s: left to the next pass", seen.name, row.state, seen.state)
                return False
            move(row, to, error=error, restarts=restarts)
        move(seen, to, error=error, restarts=restarts)
        if to != seen_state:
            level = Level.ERROR if to == EndpointState.ERROR else Level.INFO
            message = f"{seen.label or seen.name} is {to}" + (f": {error}" if error else "")
            self.events.record(seen.route_id, f"deployment.{to.lower()}", message, level=level, deployment_id=seen.id)
        return True
