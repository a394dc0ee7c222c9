"""A real Ray cluster on this machine for the Ray test group: a head and worker nodes, each a ``ray start``.

The group runs inside a loopback-only network namespace (``make test-ray``: ``unshare -n``, then
``ip link set lo up``): Ray binds the host's interface address whatever ``--node-ip-address`` says, and
there the only address is 127.0.0.1, so the nodes, the servers and the clients talk over loopback and
nothing can leave the machine. Each node's object store is capped (80 MB) so three fit beside the servers.

Nodes are told apart by a custom resource of their own name; a node is killed by SIGKILL to its raylet
(its worker processes, the replicas' actors among them, end with it), and the cluster is stopped by
killing every process started under its temporary folder, never by ``ray stop``, which would stop every
Ray process of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.procs import free_port

RAY = str(Path(sys.executable).parent / "ray")
GIB = 2**30
# GCS notices a dead node in about 1.5 s instead of the default 15-30 s.
FAST_HEALTH = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass
class RayCluster:
    env: dict[str, str]  # every node's environment on top of ours (storage credentials, cache folders)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mpray")))  # short: socket paths
    port: int = field(default_factory=free_port)
    workers: list[str] = field(default_factory=list)
    started: int = 0  # workers ever started: names stay unique after a node is killed and replaced

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> None:
        env = {**os.environ, **FAST_HEALTH, **self.env, "MODELPORT_NODE_CACHE_DIR": str(self.root / "cache" / name)}
        common = ["--node-ip-address", "127.0.0.1", "--object-store-memory", str(80 * 2**20)]
        common += ["--resources", json.dumps({name: 1}), "--disable-usage-stats"]
        out = subprocess.run([RAY, "start", *args, *common], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"ray start {name} failed:\n{out.stdout}\n{out.stderr}"

    def start_head(self) -> None:
        # No CPU for replicas on the head: they go to the workers, as on a cluster whose head only coordinates.
        args = ["--head", "--port", str(self.port), "--num-cpus", "0", "--memory", str(GIB)]
        self._start("head", [*args, "--include-dashboard=false", "--temp-dir", str(self.root)])

    def add_worker(self, cpus: int = 2, memory_gib: int = 5) -> str:
        self.started += 1
        name = f"worker{self.started}"
        self._start(name, ["--address", self.address, "--num-cpus", str(cpus), "--memory", str(memory_gib * GIB)])
        self.workers.append(name)
        return name

    def raylet(self, name: str) -> psutil.Process:
        for p in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.info["name"] == "raylet" and str(self.root) in cmdline and name in cmdline:
                return p
        raise LookupError(f"no raylet for node {name}")

    def kill_node(self, name: str) -> None:
        """SIGKILL the node's raylet; its workers (the actors on it) notice and end with it."""
        self.raylet(name).send_signal(signal.SIGKILL)
        self.workers.remove(name)

    def kill_head(self) -> None:
        """The head node gone at once: its GCS and raylet killed (the cluster's control plane)."""
        for p in self._processes():
            if p.info["name"] in ("gcs_server", "raylet") and "head" in " ".join(p.info["cmdline"] or []):
                p.send_signal(signal.SIGKILL)
        for p in self._processes():
            if p.info["name"] == "gcs_server":
                p.send_signal(signal.SIGKILL)

    def _processes(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["name", "cmdline", "environ"]):
            try:
                cmdline = " ".join(p.info["cmdline"] or [])
                env = p.info["environ"] or {}
            except psutil.Error:
                continue
            if str(self.root) in cmdline or env.get("MODELPORT_NODE_CACHE_DIR", "").startswith(str(self.root)):
                found.append(p)
        return found

    def stop(self) -> None:
        procs = self._processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)

    def actors(self, namespace: str = "modelport") -> list[str]:
        """Named actors alive in ``namespace``."""
        return list(self._driver(namespace, "print(json.dumps(sorted(ray.util.list_named_actors())))"))

    def kill_actors(self, namespace: str = "modelport") -> None:
        """Stop every named actor of ``namespace``: replicas a test left behind (they are detached)."""
        self._driver(
            namespace, "[ray.kill(ray.get_actor(n)) for n in ray.util.list_named_actors()]; print(json.dumps(0))"
        )

    def _driver(self, namespace: str, code: str) -> object:
        # A subprocess: a test process that joined the cluster would be ended by Ray if the head went away.
        head = f"import json, ray; ray.init(address={self.address!r}, namespace={namespace!r}, logging_level='ERROR'); "
        out = subprocess.run([sys.executable, "-c", head + code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for(check, timeout: float, what: str, every: float = 0.3):  # type: ignore[no-untyped-def]
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"{what} did not happen in {timeout:.0f} s (last: {last!r})")
