"""Where a deployment's replicas run: the placement backends.

The supervisor decides *how many* replicas each deployment has and watches them; a ``Placement``
decides *where* they run and how to reach them. Two backends:

- ``LocalPlacement`` (the default): engine processes of this server, forked from its fork server (or
  started as programs), answering on Unix sockets, on this host's hardware (``hardware.detect``).
- ``RayPlacement`` (``MODELPORT_RAY_ADDRESS``): one Ray actor per replica, placed by Ray on a node with
  the CPUs, memory or GPUs its hardware configuration asks for, spread across nodes; it answers the
  engine protocol over TCP with a token, and fetches its model from the blob store. The hardware is the
  cluster's (``hardware.from_cluster``). See ``raycluster/``.

Both hand the supervisor a ``ReplicaHandle`` per replica, so crash budgets, readiness, draining,
autoscaling and events are one code path whichever backend runs the replica.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from modelport.endpoints.hardware import HardwareConfig, Inventory, detect, from_cluster
from modelport.forkserver import ForkFailed
from modelport.raycluster.client import AgentClient, ClusterUnavailable
from modelport.serving.host import EngineProcess, EngineSpec, exit_reason, fork_engine, log_tail, spawn, terminate
from modelport.serving.ipc import EngineAddress, TcpAddress
from modelport.settings import Settings

log = logging.getLogger(__name__)

INVENTORY_S = 10.0  # how often the Ray backend re-reads the cluster's nodes
LOST = -9  # the exit status a replica lost with its node reads as (as if SIGKILLed)


# Device, memory budget and environment of replica ``index`` of a deployment on ``config``, given what
# its reservation holds.
Devices = Callable[[HardwareConfig, dict[str, Any], int], tuple[str, int, dict[str, str]]]


def local_devices(config: HardwareConfig, held: dict[str, Any], index: int) -> tuple[str, int, dict[str, str]]:
    """On this host: its share of the cores, or its slice of the GPUs the deployment reserved, by index."""
    if config.is_cpu:
        return "cpu", config.memory_bytes, {"OMP_NUM_THREADS": str(config.gpu_count)}
    per = int(held.get("gpus_per_replica", config.gpu_count))
    gpus = held.get("gpus", [])[index * per : (index + 1) * per]
    return "cuda", int(config.memory_bytes * 0.9), {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


def ray_devices(config: HardwareConfig, held: dict[str, Any], index: int) -> tuple[str, int, dict[str, str]]:
    """On a Ray node: Ray gives the actor its GPUs (its own CUDA_VISIBLE_DEVICES); cores as on this host."""
    if config.is_cpu:
        return local_devices(config, held, index)
    return "cuda", int(config.memory_bytes * 0.9), {}


class ReplicaHandle(Protocol):
    """One launched replica, as the supervisor watches it."""

    @property
    def name(self) -> str:
        """Unique per launch."""
        ...

    @property
    def where(self) -> str:
        """For logs and events: "pid 1234", "node 3f2a… (10.0.0.7)"."""
        ...

    def poll(self) -> int | None:
        """None while it runs (or loads); its exit status once it has ended, failed or been lost."""
        ...

    def ended(self, code: int) -> str:
        """How it ended, in words ("was killed by SIGKILL", "was lost with its node …")."""
        ...

    def address(self) -> EngineAddress | None:
        """Where its engine answers once its model is loaded (probe it); None while it cannot yet."""
        ...

    def stop(self) -> None: ...

    def log_tail(self) -> str:
        """The end of its output, for the error that says why it failed."""
        ...


class Placement(Protocol):
    kind: str  # "local" or "ray"
    # Whether replicas outlive this server: then a server that stops leaves them serving, and the next
    # supervisor adopts them (``running``), instead of stopping them with it.
    replicas_outlive_server: bool

    def inventory(self) -> Inventory: ...

    def devices(self, config: HardwareConfig, held: dict[str, Any], index: int) -> tuple[str, int, dict[str, str]]:
        """Device, memory budget and environment of replica ``index`` (``Devices``)."""
        ...

    def launch(self, endpoint_id: str, index: int, spec: EngineSpec, config: HardwareConfig) -> ReplicaHandle: ...

    def refresh(self) -> None:
        """Once per supervisor pass: learn the state of every replica launched (one call to a cluster)."""
        ...

    def problem(self) -> tuple[float, str] | None:
        """Since when (monotonic) and why no replica can run now (a cluster that does not answer); else None."""
        ...

    def running(self) -> dict[str, list[tuple[int, ReplicaHandle]]]:
        """Replicas that run without this server having launched them (another server's, or a previous run's),
        by deployment id: what a new supervisor adopts, and what a server that does not supervise routes to."""
        ...

    def reap(self, keep: set[str]) -> int:
        """Stop running replicas whose names are not in ``keep``; how many."""
        ...

    def close(self) -> None: ...


# --- local ------------------------------------------------------------------------------------------
@dataclass
class LocalReplica:
    name: str
    proc: EngineProcess
    socket: Path
    log_path: Path

    @property
    def where(self) -> str:
        return f"pid {self.proc.pid}"

    def poll(self) -> int | None:
        return self.proc.poll()

    def ended(self, code: int) -> str:
        return exit_reason(code)

    def address(self) -> EngineAddress | None:
        return self.socket

    def stop(self) -> None:
        terminate(self.proc)
        self.socket.unlink(missing_ok=True)

    def log_tail(self) -> str:
        return log_tail(self.log_path)


class LocalPlacement:
    """Replicas as engine processes of this server, on this host."""

    kind = "local"
    replicas_outlive_server = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._inventory = detect(settings.endpoint_memory_bytes)
        self._sockets: Path | None = None

    def inventory(self) -> Inventory:
        return self._inventory

    def devices(self, config: HardwareConfig, held: dict[str, Any], index: int) -> tuple[str, int, dict[str, str]]:
        return local_devices(config, held, index)

    def launch(self, endpoint_id: str, index: int, spec: EngineSpec, config: HardwareConfig) -> LocalReplica:
        """Start the replica's engine process; its spec and log live in the endpoint's folder."""
        folder = self.settings.data_dir / "endpoints" / endpoint_id
        folder.mkdir(parents=True, exist_ok=True)
        # A name of its own per launch: a replacement must never unlink a live replica's socket.
        name = f"{endpoint_id}-{index}-{uuid.uuid4().hex[:8]}"
        sock = self._socket_dir() / f"{name}.sock"
        log_path, spec_path = folder / f"replica-{index}.log", folder / f"replica-{index}.json"
        proc: EngineProcess
        try:
            # Forked from the fork server, which has torch imported: milliseconds, not seconds.
            proc = fork_engine(spec, spec_path, sock, log_path, timeout=self.settings.replica_start_timeout_s)
        except ForkFailed as e:
            log.warning("deployment %s: %s; starting replica %d as a program instead", endpoint_id, e, index)
            proc = spawn(spec, spec_path, sock, log_path)
        return LocalReplica(name, proc, sock, log_path)

    def _socket_dir(self) -> Path:
        # Unix socket paths are short (108 bytes): a private folder of their own under /tmp.
        if self._sockets is None:
            self._sockets = Path(tempfile.mkdtemp(prefix="modelport-replicas-"))
        return self._sockets

    def refresh(self) -> None:
        pass  # the supervisor polls each process itself

    def problem(self) -> tuple[float, str] | None:
        return None

    def running(self) -> dict[str, list[tuple[int, ReplicaHandle]]]:
        return {}  # processes of this server only: none outlive it, and no other server can reach them

    def reap(self, keep: set[str]) -> int:
        return 0

    def close(self) -> None:
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)


# --- ray --------------------------------------------------------------------------------------------
PREFIX = "replica."  # actor names: replica.<deployment id>.<index>.<launch>
SERVERLESS = "serverless."  # the serverless engines' (``serverless.py``): serverless.pool.<index>.<launch>


@dataclass
class RayReplica:
    name: str
    placement: RayPlacement
    status: dict[str, Any] = field(default_factory=lambda: {"state": "pending"})
    stopped: bool = False

    @property
    def where(self) -> str:
        node, host = str(self.status.get("node") or "")[:12], self.status.get("host")
        return f"node {node}… ({host})" if node else "a node Ray has not chosen yet"

    def poll(self) -> int | None:
        if self.stopped:
            return -15
        state = self.status.get("state")
        if state in ("lost", "gone"):
            return LOST
        return 1 if state == "failed" else None

    def ended(self, code: int) -> str:
        if self.stopped:
            return exit_reason(code)
        if self.status.get("state") == "failed":
            return "failed to start"
        return f"was lost on {self.where}"

    def address(self) -> EngineAddress | None:
        s = self.status
        if s.get("state") != "ready" or not s.get("port"):
            return None
        return TcpAddress(str(s["host"]), int(s["port"]), str(s["token"]))

    def stop(self) -> None:
        self.stopped = True
        self.placement.kill(self.name)

    def log_tail(self) -> str:
        return str(self.status.get("error") or "")


class RayPlacement:
    """Replicas as Ray actors on a cluster, through this server's Ray agent (``raycluster/``)."""

    kind = "ray"
    replicas_outlive_server = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.agent = AgentClient(
            settings.ray_address,
            settings.ray_namespace,
            settings.ray_call_timeout_s,
            settings.data_dir / "logs" / "ray-agent.log",
        )
        self._handles: dict[str, RayReplica] = {}
        self._inventory = Inventory((), 0, 0, datetime.now(UTC), f"Ray cluster at {settings.ray_address}: not read yet")
        self._inventory_at = 0.0
        self._problem: tuple[float, str] | None = None
        self._lock = threading.Lock()
        # What the serverless engine actors take of the cluster: not offered to endpoints.
        self.reserved_bytes, self.reserved_gpus = 0, 0

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = self.agent.call(message)
        except ClusterUnavailable as e:
            if self._problem is None:
                log.warning("%s", e)
                self._problem = (time.monotonic(), str(e))
            else:
                self._problem = (self._problem[0], str(e))
            raise
        if self._problem is not None:
            log.info("the Ray cluster at %s answers again", self.settings.ray_address)
        self._problem = None
        return answer

    def inventory(self) -> Inventory:
        """The cluster as the supervisor last read it (``refresh``). Only a server that has not read it yet
        (a request just after start) asks the cluster, within ``MODELPORT_RAY_CALL_TIMEOUT_S``."""
        if self._inventory_at == 0.0:
            self._read_nodes()
        return self._inventory

    def _read_nodes(self) -> None:
        self._inventory_at = time.monotonic()
        try:
            nodes = self._call({"op": "nodes"})["nodes"]
        except ClusterUnavailable as e:
            self._inventory = Inventory((), 0, 0, datetime.now(UTC), str(e))
            return
        self._inventory = from_cluster(self.settings.ray_address, list(nodes), self.reserved_bytes, self.reserved_gpus)

    def devices(self, config: HardwareConfig, held: dict[str, Any], index: int) -> tuple[str, int, dict[str, str]]:
        return ray_devices(config, held, index)

    def launch(self, endpoint_id: str, index: int, spec: EngineSpec, config: HardwareConfig) -> RayReplica:
        resources: dict[str, Any] = (
            {"num_cpus": config.gpu_count, "memory": config.memory_bytes}
            if config.is_cpu
            else {"num_cpus": 1, "num_gpus": config.gpu_count}
        )
        return self._launch(f"{PREFIX}{endpoint_id}.{index}.{uuid.uuid4().hex[:8]}", spec, resources)

    def launch_serverless(self, index: int, spec: EngineSpec) -> RayReplica:
        """Serverless engine ``index``: no model of its own, it loads what its requests name."""
        s = self.settings
        resources: dict[str, Any] = {"num_cpus": s.ray_serverless_cpus, "memory": s.ray_serverless_memory_bytes}
        if s.ray_serverless_gpus:
            resources["num_gpus"] = s.ray_serverless_gpus
        return self._launch(f"{SERVERLESS}pool.{index}.{uuid.uuid4().hex[:8]}", spec, resources)

    def _launch(self, name: str, spec: EngineSpec, resources: dict[str, Any]) -> RayReplica:
        s = self.settings
        message = {
            "op": "launch",
            "name": name,
            "spec": {**spec.to_json(), "env": dict(spec.env)},
            "token": secrets.token_urlsafe(24),  # its engine answers only requests that carry it
            "store": {"blob_url": s.blob_url, "s3_endpoint_url": s.s3_endpoint_url, "s3_region": s.s3_region},
            "resources": resources,
        }
        handle = RayReplica(name, self)
        with self._lock:
            self._handles[name] = handle
        try:
            self._call(message)
        except ClusterUnavailable as e:
            handle.status = {"state": "failed", "error": str(e)}
        return handle

    def kill(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)
        # A cluster that is gone has no actor left to stop; ``reap`` stops it if it comes back.
        with contextlib.suppress(ClusterUnavailable):
            self._call({"op": "kill", "name": name})

    def refresh(self) -> None:
        # Every 10 s; every second while the last read found no node (the agent still joining, a lost head).
        every = INVENTORY_S if self._inventory.capacity else 1.0
        if time.monotonic() - self._inventory_at > every:
            self._read_nodes()  # also how a cluster that answers nothing is noticed with no replica to ask
        with self._lock:
            names = [n for n, h in self._handles.items() if not h.stopped]
        if not names:
            return
        try:
            status = self._call({"op": "status", "names": names})["status"]
        except ClusterUnavailable:
            return
        with self._lock:
            for name, st in status.items():
                if name in self._handles:
                    self._handles[name].status = dict(st)

    def problem(self) -> tuple[float, str] | None:
        return self._problem

    def running(self, prefix: str = PREFIX) -> dict[str, list[tuple[int, ReplicaHandle]]]:
        try:
            names = list(self._call({"op": "list", "prefix": prefix})["names"])
            status = self._call({"op": "status", "names": names})["status"] if names else {}
        except ClusterUnavailable:
            return {}
        found: dict[str, list[tuple[int, ReplicaHandle]]] = {}
        handle: RayReplica
        with self._lock:
            for name in names:
                _, endpoint_id, index, _launch = name.split(".", 3)
                handle = self._handles.setdefault(name, RayReplica(name, self))
                handle.status = dict(status.get(name, {"state": "pending"}))
                found.setdefault(endpoint_id, []).append((int(index), handle))
        return found

    def reap(self, keep: set[str]) -> int:
        try:
            names = self._call({"op": "list", "prefix": PREFIX})["names"]
        except ClusterUnavailable:
            return 0
        extra = [n for n in names if n not in keep]
        for name in extra:
            log.info("stopping replica actor %s: no deployment wants it", name)
            self.kill(name)
        return len(extra)

    def close(self) -> None:
        self.agent.close()  # the actors are detached: they keep serving, and the next server adopts them


def open_placement(settings: Settings) -> Placement:
    if settings.ray_address:
        return RayPlacement(settings)
    return LocalPlacement(settings)
