"""Keeps each endpoint's replica processes matching what its row asks for.

A thread in ``modelport serve`` reconciles every ``interval`` seconds (and when woken by a change):
it launches missing replicas, marks the endpoint STARTED once every replica has loaded its model,
restarts replicas that died (up to ``replica_max_restarts``, then ERROR with the reason and the
hardware released), stops replicas of endpoints asked to stop, deleted, or idle past their
``inactive_timeout``, and on a server restart brings started endpoints back up.

Where replicas run is the placement backend's (``placement.py``): this host's processes, or a Ray
cluster's actors. With several servers on one database, only the holder of the ``controller`` lease
(``lease.py``) reconciles; the others *follow*: they learn from the backend which replicas run and
route to them, and change nothing. A new holder adopts the replicas that run (Ray's outlive the server
that launched them) instead of starting them again, and stops those no deployment wants. A cluster that
stops answering puts its deployments in ERROR with the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from modelport.catalog.service import Catalog
from modelport.endpoints.autoscale import Policy, Pressure, decide
from modelport.endpoints.events import Events, Level
from modelport.endpoints.hardware import HardwareConfig, Inventory
from modelport.endpoints.lease import Lease
from modelport.endpoints.placement import Devices, Placement, ReplicaHandle, local_devices
from modelport.endpoints.serverless import ClusterServerless
from modelport.endpoints.service import replica_count
from modelport.endpoints.states import RUNNING_STATES, EndpointState, move
from modelport.errors import EndpointNotRunning, EngineOverloaded, ModelportError
from modelport.manifest import ModelType, context_length_of
from modelport.serving.artifacts import ArtifactCache
from modelport.serving.engine import Artifact, Pooling
from modelport.serving.host import EngineSpec, engine_settings
from modelport.serving.ipc import EngineClient, probe
from modelport.serving.service import read_pooling
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Model, utcnow

log = logging.getLogger(__name__)

FOLLOW_S = 2.0  # how often a server that does not supervise asks the backend which replicas run
REAP_S = 15.0  # how often the supervisor stops replicas that no deployment wants (a previous run's)
STABLE_S = 600.0  # replicas up this long forgive earlier crashes
DRAIN_S = 60.0  # a replica scaled away or stopped may take this long to answer what it has in flight
# ...and lives at least this long: a request routed to it just before may still be tokenizing, not yet
# counted in flight.
DRAIN_GRACE_S = 5.0
# A retired replica ends only once nothing was routed to it, begun or ended for this long: a streamed
# request's ``prepare`` and ``generate`` leave a gap with nothing in flight (``EngineClient.quiet_for``).
QUIET_S = 2.0
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
    devices: Devices = local_devices,
) -> EngineSpec:
    """Replica ``index`` of ``endpoint`` on ``config``, from what its reservation holds. No I/O.

    A replica is an engine process like a serverless worker, with its own device and memory budget, that
    loads ``artifact`` before it answers."""
    device, memory, env = devices(config, endpoint.reservation or {}, index)
    return EngineSpec(
        parent_pid=parent_pid,
        settings=engine_settings(settings, engine_device=device, engine_memory_bytes=memory, engine_workers=1),
        model=artifact,
        context_length=context_length_of(model.manifest, settings.max_model_len),
        pooling=pooling,
        env=env,
    )


@dataclass
class Replica:
    endpoint_id: str
    index: int
    handle: ReplicaHandle  # the process or actor, wherever the placement backend runs it
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    ready_at: float = 0.0
    engine: EngineClient | None = None


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the console's endpoint page shows it."""

    index: int
    ready: bool
    where: str  # "pid 1234", "node 3f2a… (10.0.0.7)"
    since: float  # Unix time it answered since (ready), or was launched (starting)
    in_flight: int
    last_error: str  # how this index's previous replica ended, if one did; else ""


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
        placement: Placement,
        events: Events | None = None,
        lease: Lease | None = None,
        serverless: ClusterServerless | None = None,
    ) -> None:
        self.settings, self.db, self.catalog, self.artifacts, self.placement = (
            settings,
            db,
            catalog,
            artifacts,
            placement,
        )
        self.events = events or Events(db)
        self.lease = lease  # None: this server supervises alone
        self.serverless = serverless  # serverless engines on the cluster, kept by the same pass
        self._controlling = False  # whether the last pass reconciled (held the lease)
        self._followed = 0.0
        self._reaped = 0.0
        self._adoptable: dict[str, list[tuple[int, ReplicaHandle]]] | None = None  # this pass's, read once
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
        self._ended: dict[tuple[str, int], str] = {}  # (deployment, index) → how its last replica ended

    @property
    def inventory(self) -> Inventory:
        return self.placement.inventory()

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
        if self.lease is not None:
            self.lease.release()  # another server takes over now, not once the lease runs out
        with self._lock:
            running = [r for replicas in self.replicas.values() for r in replicas]
            retired = [r for r, _, _ in self._retired]
            self.replicas.clear()
            self._retired.clear()
        if not self.placement.replicas_outlive_server:  # Ray's keep serving: the next supervisor adopts them
            for r in running:
                r.handle.stop()
        for r in retired:
            r.handle.stop()
        self.placement.close()

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

    def replica_views(self, endpoint_id: str) -> list[ReplicaView]:
        """The deployment's replicas, by index, for the console (this server's view: a follower's too)."""
        now_wall, now = time.time(), time.monotonic()
        with self._lock:
            replicas = sorted(self.replicas.get(endpoint_id, []), key=lambda r: r.index)
            ended = dict(self._ended)
        return [
            ReplicaView(
                r.index,
                r.ready,
                r.handle.where,
                now_wall - (now - (r.ready_at if r.ready else r.started)),
                r.engine.in_flight if r.engine is not None else 0,
                ended.get((endpoint_id, r.index), ""),
            )
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
        chosen = min(ready, key=lambda e: e.in_flight)
        chosen.touch()  # counted busy from now: a drain must not stop it before the request calls
        return chosen

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
    def controlling(self) -> bool:
        """Whether this server supervises now: it holds the controller lease, or supervises alone."""
        return self.lease is None or self.lease.held()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                controlling = self.controlling()
                if controlling:
                    self._controlling = True
                    self.reconcile()
                else:
                    self.follow()
                if self.serverless is not None:
                    self.serverless.tend(controlling)
            except Exception:
                log.exception("endpoint supervisor pass failed; retrying")
            self._wake.wait(self.interval)
            self._wake.clear()

    def reconcile(self) -> None:
        self.placement.refresh()  # every replica's state, in one call to a cluster
        self._adoptable = None
        self._drain()
        with self.db.session() as s:
            endpoints = {e.id: e for e in s.scalars(select(Endpoint))}
        problem = self.placement.problem()
        if problem is not None and time.monotonic() - problem[0] >= self.settings.ray_call_timeout_s:
            self._unreachable(endpoints.values(), problem[1])
            return
        for endpoint_id in list(self.replicas):
            if endpoint_id not in endpoints:  # deleted: stop its replicas, drop their specs, logs and endings
                self._stop_replicas(endpoint_id)
                shutil.rmtree(self.settings.data_dir / "endpoints" / endpoint_id, ignore_errors=True)
                with self._lock:
                    self._ended = {k: v for k, v in self._ended.items() if k[0] != endpoint_id}
        for endpoint in endpoints.values():
            if self._stopping.is_set():
                return
            try:
                self._reconcile_one(endpoint)
            except Exception:  # one deployment's trouble must not leave every other one unsupervised
                log.exception("endpoint %s: supervisor pass failed; retrying", endpoint.name)
        self._reap()

    def _unreachable(self, endpoints: Iterable[Endpoint], reason: str) -> None:
        """The backend cannot run replicas now (a Ray head that does not answer): every deployment that
        should run goes to ERROR with the reason, releasing its hardware; a start after the cluster is
        back launches it again. Nothing else stops: the API, serverless models and uploads keep answering."""
        for endpoint in endpoints:
            if endpoint.state in RUNNING_STATES:
                self._stop_replicas(endpoint.id)
                self._move(endpoint, EndpointState.ERROR, error=reason)
            elif endpoint.state == EndpointState.STOPPING:
                self._stop_replicas(endpoint.id)
                self._move(endpoint, EndpointState.STOPPED)

    def _reap(self) -> None:
        """Stop replicas that run and that no deployment of this supervisor wants (a previous run's, or
        those of deployments deleted meanwhile); only backends whose replicas outlive a server have any."""
        if not self.placement.replicas_outlive_server or time.monotonic() - self._reaped < REAP_S:
            return
        self._reaped = time.monotonic()
        with self._lock:
            keep = {r.handle.name for replicas in self.replicas.values() for r in replicas}
            keep |= {r.handle.name for r, _, _ in self._retired}
        if stopped := self.placement.reap(keep):
            log.info("stopped %d replica(s) no deployment wants", stopped)

    def _adopt(self, endpoint: Endpoint) -> list[Replica]:
        """Replicas of ``endpoint`` that already run (launched by a previous run or another server): the
        first pass of a new supervisor takes them over instead of launching more."""
        if not self.placement.replicas_outlive_server:
            return []
        if self._adoptable is None:
            self._adoptable = self.placement.running()
        found = self._adoptable.pop(endpoint.id, [])
        if found:
            log.info("endpoint %s: adopting %d running replica(s)", endpoint.name, len(found))
        return [Replica(endpoint.id, index, handle) for index, handle in found]

    # --- following --------------------------------------------------------------------------------
    def follow(self) -> None:
        """A pass of a server that does not supervise: learn which replicas run, and which answer, so
        requests that reach this server are routed to them. It launches, stops and moves nothing."""
        if self._controlling:  # it held the lease and lost it: what it launched is the new holder's now
            self._step_down()
        if time.monotonic() - self._followed < FOLLOW_S:
            return
        self._followed = time.monotonic()
        self.placement.refresh()  # the cluster's capacity, for this server's /v1/hardware
        running = self.placement.running()
        with self._lock:
            for endpoint_id, found in running.items():
                known = {r.handle.name: r for r in self.replicas.get(endpoint_id, [])}
                self.replicas[endpoint_id] = [known.get(h.name) or Replica(endpoint_id, i, h) for i, h in found]
            for endpoint_id in set(self.replicas) - set(running):
                del self.replicas[endpoint_id]
            replicas = [r for rs in self.replicas.values() for r in rs]
        for r in replicas:
            address = r.handle.address()
            answers = address is not None and r.handle.poll() is None and probe(address) is not None
            if answers and not r.ready:
                assert address is not None
                label = f"deployment {r.endpoint_id} replica {r.index}"
                r.ready, r.ready_at, r.engine = (
                    True,
                    time.monotonic(),
                    EngineClient(address, self.settings.engine, label),
                )
            elif not answers:
                r.ready = False

    def _step_down(self) -> None:
        self._controlling = False
        log.warning("this server no longer holds the controller lease: another supervises the endpoints now")
        with self._lock:
            running = [r for rs in self.replicas.values() for r in rs]
            self.replicas.clear()
        if not self.placement.replicas_outlive_server:  # no other server can reach them: they end with us
            for r in running:
                r.handle.stop()

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
        if endpoint.id not in self.replicas:
            self.replicas[endpoint.id] = self._adopt(endpoint)
        replicas = self.replicas[endpoint.id]
        for r in list(replicas):
            code = r.handle.poll()
            if code is not None:
                replicas.remove(r)
                carry_on = self._crashed(endpoint, r, code)  # before stop: a stopped handle forgets how it ended
                r.handle.stop()  # its socket, or its actor's name
                if not carry_on:
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
        reason = replica.handle.ended(code)
        restarts = endpoint.restarts + 1
        log.warning("endpoint %s replica %d %s (crash %d)", endpoint.name, replica.index, reason, restarts)
        output = replica.handle.log_tail()
        lines = output.strip().splitlines()
        last = lines[-1][:300] if lines else ""
        ended = f"{reason} on {replica.handle.where}" + (f": {last}" if last and code > 0 else "")
        with self._lock:
            self._ended[(endpoint.id, replica.index)] = f"{ended} ({utcnow():%Y-%m-%d %H:%M UTC})"
        self.events.record(
            endpoint.route_id,
            "deployment.replica_ended",
            f"{endpoint.label or endpoint.name}: replica {replica.index} {ended}",
            level=Level.WARN,
            deployment_id=endpoint.id,
        )
        if restarts > self.settings.replica_max_restarts:
            self._stop_replicas(endpoint.id)
            error = f"replica {reason} {restarts} times" + (f"; last output: {output}" if output else "")
            self._move(endpoint, EndpointState.ERROR, error=error, restarts=restarts)
            return False
        return self._move(endpoint, EndpointState.STARTING, restarts=restarts)

    def _check_ready(self, endpoint: Endpoint, replica: Replica) -> None:
        address = replica.handle.address()
        if address is not None and probe(address) is not None:  # it answers only once its model is loaded
            label = f"endpoint {endpoint.name} replica {replica.index}"
            client = EngineClient(address, self.settings.engine, label)
            replica.ready, replica.ready_at, replica.engine = True, time.monotonic(), client
            self._waking.discard(endpoint.id)
            log.info("endpoint %s replica %d ready (%s)", endpoint.name, replica.index, replica.handle.where)
            self.events.record(
                endpoint.route_id,
                "deployment.replica_ready",
                f"{endpoint.label or endpoint.name}: replica {replica.index} answers, on {replica.handle.where}",
                deployment_id=endpoint.id,
            )
        elif time.monotonic() - replica.started > self.settings.replica_start_timeout_s:
            log.warning("endpoint %s replica %d did not start in time", endpoint.name, replica.index)
            replica.handle.stop()

    def _launch(self, endpoint: Endpoint, index: int) -> Replica:
        model = self.catalog.model_at(endpoint.model_id, endpoint.revision_id)
        assert model is not None, "a model with endpoints cannot be deleted"
        artifact = self.artifacts.get(model, self.catalog.files(model))
        config = next(c for c in self.inventory.configs({}) if c.id == endpoint.hardware)
        pooling = read_pooling(artifact.path) if model.type == ModelType.EMBEDDING else None
        spec = replica_spec(
            endpoint, model, artifact, self.settings, config, index, pooling, os.getpid(), self.placement.devices
        )
        handle = self.placement.launch(endpoint.id, index, spec, config)
        log.info("endpoint %s: launched replica %d (%s)", endpoint.name, index, handle.where)
        return Replica(endpoint.id, index, handle)

    def _stop_replicas(self, endpoint_id: str) -> None:
        """Stop taking requests; each replica ends once its requests are answered (``_drain``)."""
        with self._lock:
            replicas = self.replicas.pop(endpoint_id, [])
            # No grace beyond QUIET_S: a stopped endpoint takes no new request (its state says so before this).
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
                or (r.engine.quiet_for(QUIET_S) and now - at >= grace)
                or now - at > DRAIN_S
                or r.handle.poll() is not None
            ]
            self._retired = [item for item in self._retired if item not in done]
        for r, _, _ in done:
            r.handle.stop()

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
