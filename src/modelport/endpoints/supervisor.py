"""Keeps each endpoint's replica processes matching what its row asks for.

A thread in ``modelport serve`` reconciles every ``interval`` seconds (and when woken by a change):
it launches missing replicas, marks the endpoint STARTED once every replica has loaded its model,
restarts replicas that died (up to ``replica_max_restarts``, then ERROR with the reason and the
hardware released), stops replicas of endpoints asked to stop, deleted, or idle past their
``inactive_timeout``, and on a server restart brings started endpoints back up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from modelport.catalog.service import Catalog
from modelport.endpoints.hardware import Inventory
from modelport.endpoints.remote import RemoteEngine
from modelport.endpoints.service import replica_count
from modelport.endpoints.states import RUNNING_STATES, EndpointState
from modelport.endpoints.wire import artifact_to_json
from modelport.errors import EndpointNotRunning
from modelport.serving.artifacts import ArtifactCache
from modelport.serving.engine import EngineOverloaded
from modelport.serving.service import read_pooling
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Model, utcnow

log = logging.getLogger(__name__)

STABLE_S = 600.0  # replicas up this long forgive earlier crashes


@dataclass
class Replica:
    endpoint_id: str
    index: int
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    ready_at: float = 0.0
    engine: RemoteEngine | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Supervisor:
    def __init__(
        self, settings: Settings, db: Database, catalog: Catalog, artifacts: ArtifactCache, inventory: Inventory
    ) -> None:
        self.settings, self.db, self.catalog, self.artifacts, self.inventory = (
            settings,
            db,
            catalog,
            artifacts,
            inventory,
        )
        self.replicas: dict[str, list[Replica]] = {}
        self.interval = 0.5
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}

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
                    _terminate(r.proc)
            self.replicas.clear()

    def ready_replicas(self, endpoint_id: str) -> int:
        with self._lock:
            return sum(1 for r in self.replicas.get(endpoint_id, []) if r.ready)

    # --- routing -----------------------------------------------------------------------------------
    def engine_for(self, endpoint: Endpoint) -> RemoteEngine:
        """The least-loaded ready replica of a started endpoint."""
        if endpoint.state != EndpointState.STARTED:
            raise EndpointNotRunning(
                f"endpoint {endpoint.name} is {endpoint.state}"
                + (f" ({endpoint.error})" if endpoint.error else "")
                # Said the same to every interface: the CLI's hint, the console's page and the API docs
                # each name their own way to start it (code endpoint_not_running).
                + "; it serves requests once it is started",
                param="model",
            )
        with self._lock:
            ready = [r.engine for r in self.replicas.get(endpoint.id, []) if r.ready and r.engine is not None]
        if not ready:
            raise EngineOverloaded(f"endpoint {endpoint.name} has no ready replica right now (restarting); retry")
        self._touch(endpoint.id)
        return min(ready, key=lambda e: e.in_flight)

    def _touch(self, endpoint_id: str) -> None:
        # At most one write per endpoint every 10 s: inactive_timeout counts in minutes.
        now = time.monotonic()
        if now - self._touched.get(endpoint_id, 0.0) > 10:
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
        with self.db.session() as s:
            endpoints = {e.id: e for e in s.scalars(select(Endpoint))}
        for endpoint_id in list(self.replicas):
            if endpoint_id not in endpoints:  # deleted: stop its replicas, drop their specs and logs
                self._stop_replicas(endpoint_id)
                shutil.rmtree(self.settings.data_dir / "endpoints" / endpoint_id, ignore_errors=True)
        for endpoint in endpoints.values():
            if self._stopping.is_set():
                return
            if endpoint.desired == EndpointState.STARTED and endpoint.state in RUNNING_STATES:
                if self._idle_too_long(endpoint):
                    log.info("endpoint %s idle for %s min: stopping", endpoint.name, endpoint.inactive_timeout)
                    self._set(endpoint.id, state=EndpointState.STOPPING, desired=EndpointState.STOPPED)
                    continue
                self._keep_running(endpoint)
            elif endpoint.state in (EndpointState.STOPPING, *RUNNING_STATES):
                self._stop_replicas(endpoint.id)
                self._set(endpoint.id, state=EndpointState.STOPPED, reservation=None)

    def _idle_too_long(self, endpoint: Endpoint) -> bool:
        if not endpoint.inactive_timeout or endpoint.state != EndpointState.STARTED:
            return False
        since = endpoint.last_request_at or endpoint.updated_at
        return bool(utcnow() - _aware(since) > timedelta(minutes=endpoint.inactive_timeout))

    def _keep_running(self, endpoint: Endpoint) -> None:
        replicas = self.replicas.setdefault(endpoint.id, [])
        for r in list(replicas):
            code = r.proc.poll()
            if code is not None:
                replicas.remove(r)
                if not self._crashed(endpoint, r, code):
                    return
            elif not r.ready:
                self._check_ready(endpoint, r)
        want = replica_count(endpoint)
        while len(replicas) > want:  # scaled down
            with self._lock:
                extra = replicas.pop()
            _terminate(extra.proc)
        while len(replicas) < want:
            replicas.append(self._launch(endpoint, len(replicas)))
        all_ready = len(replicas) == want and all(r.ready for r in replicas)
        if all_ready and endpoint.restarts and all(time.monotonic() - r.ready_at > STABLE_S for r in replicas):
            self._set(endpoint.id, restarts=0)  # the crash budget counts crashes close together only
        wanted_state = EndpointState.STARTED if all_ready else EndpointState.STARTING
        if endpoint.state != wanted_state:
            self._set(endpoint.id, state=wanted_state)

    def _crashed(self, endpoint: Endpoint, replica: Replica, code: int) -> bool:
        """Count the crash; False when the endpoint has now failed for good."""
        reason = _exit_reason(code)
        restarts = endpoint.restarts + 1
        log.warning("endpoint %s replica %d %s (crash %d)", endpoint.name, replica.index, reason, restarts)
        if restarts > self.settings.replica_max_restarts:
            self._stop_replicas(endpoint.id)
            tail = _tail(replica.log_path)
            self._set(
                endpoint.id,
                state=EndpointState.ERROR,
                desired=EndpointState.STOPPED,
                reservation=None,
                restarts=restarts,
                error=f"replica {reason} {restarts} times" + (f"; last output: {tail}" if tail else ""),
            )
            return False
        self._set(endpoint.id, restarts=restarts, state=EndpointState.STARTING)
        endpoint.restarts = restarts
        return True

    def _check_ready(self, endpoint: Endpoint, replica: Replica) -> None:
        try:
            ok = httpx.get(replica.url + "/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            replica.ready, replica.ready_at, replica.engine = True, time.monotonic(), RemoteEngine(replica.url)
            log.info("endpoint %s replica %d ready on %s", endpoint.name, replica.index, replica.url)
        elif time.monotonic() - replica.started > self.settings.replica_start_timeout_s:
            log.warning("endpoint %s replica %d did not start in time", endpoint.name, replica.index)
            _terminate(replica.proc)

    def _launch(self, endpoint: Endpoint, index: int) -> Replica:
        with self.db.session() as s:
            model = s.get(Model, endpoint.model_id)
        assert model is not None, "a model with endpoints cannot be deleted"
        artifact = self.artifacts.get(model, self.catalog.files(model))
        held = endpoint.reservation or {}
        env = dict(os.environ)
        config = next(c for c in self.inventory.configs({}) if c.id == endpoint.hardware)
        if config.is_cpu:
            device, memory = "cpu", config.memory_bytes
            env["OMP_NUM_THREADS"] = str(config.gpu_count)
        else:
            per = int(held.get("gpus_per_replica", config.gpu_count))
            gpus = held.get("gpus", [])[index * per : (index + 1) * per]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
            device, memory = "cuda", int(config.memory_bytes * 0.9)
        spec = {
            "parent_pid": os.getpid(),
            "data_dir": str(self.settings.data_dir),
            "device": device,
            "memory_bytes": memory,
            "max_num_seqs": self.settings.max_num_seqs,
            "max_loras": self.settings.max_loras,
            "model": artifact_to_json(artifact),
            "context_length": int((model.manifest or {}).get("context_length") or 2048),
            "pooling": read_pooling(artifact.path).__dict__ if model.type == "embedding" else None,
        }
        folder = self.settings.data_dir / "endpoints" / endpoint.id
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / f"replica-{index}.json"
        spec_path.write_text(json.dumps(spec))
        port = _free_port()
        log_path = folder / f"replica-{index}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "modelport.cli.main", "replica", "--spec", str(spec_path), "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        log.info("endpoint %s: launched replica %d (pid %d, port %d)", endpoint.name, index, proc.pid, port)
        return Replica(endpoint.id, index, proc, port, log_path)

    def _stop_replicas(self, endpoint_id: str) -> None:
        with self._lock:
            replicas = self.replicas.pop(endpoint_id, [])
        for r in replicas:
            _terminate(r.proc)

    def _set(self, endpoint_id: str, **values: object) -> None:
        with self.db.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            if endpoint is None:
                return
            for key, value in values.items():
                setattr(endpoint, key, value)
            endpoint.updated_at = utcnow()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail(path: Path, chars: int = 400) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " ".join(text[-chars:].split())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
