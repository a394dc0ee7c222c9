"""The API server's side of ``agent.py``: start the agent, ask it things, within deadlines.

Every call is blocking and bounded by ``MODELPORT_RAY_CALL_TIMEOUT_S``; the supervisor's thread makes
them, never a request's. When the agent cannot reach the cluster (it exited at start, or it stopped
answering), the call raises ``ClusterUnavailable`` with the reason, and the next calls raise it at once
until ``RETRY_S`` has passed, then a new agent tries again: a head node that is gone costs one deadline
per retry, not one per endpoint per pass. The first agent is waited for (the server has just started);
a replacement joins in the background while calls keep failing at once with the reason, so the caller
(the supervisor, which must put the cluster's deployments in ERROR in time) never waits on a join.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from modelport import forkserver
from modelport.serving.host import log_tail, terminate
from modelport.serving.ipc import pack, read_frame_blocking

log = logging.getLogger(__name__)

RETRY_S = 5.0  # after a failure, how long the next calls fail at once before an agent tries again
CONNECT_S = 60.0  # how long a new agent may take to import ray and join the cluster


class ClusterUnavailable(Exception):
    """The Ray cluster does not answer; ``str(e)`` says why, without any secret (there is none to say)."""


class AgentClient:
    def __init__(self, address: str, namespace: str, timeout: float, log_path: Path) -> None:
        self.address, self.namespace, self.timeout, self.log_path = address, namespace, timeout, log_path
        self._folder = Path(tempfile.mkdtemp(prefix="modelport-ray-"))
        self._socket = self._folder / "agent.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed: tuple[float, str] | None = None  # when the last call failed, and why
        self._joining_until = 0.0  # a replacement agent started in the background has until then to join
        self._lock = threading.Lock()

    def call(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            self._ensure()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout or self.timeout)
                sock.connect(str(self._socket))
                sock.sendall(pack(message))
                answer: dict[str, Any] = read_frame_blocking(sock)
        except (OSError, ValueError) as e:
            why = "it did not answer in time" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            raise self._fail(f"the Ray cluster at {self.address} is unreachable ({why})") from None
        if "error" in answer:
            raise ClusterUnavailable(f"the Ray cluster at {self.address} refused: {answer['error']}")
        self._failed = None
        return answer

    def _fail(self, reason: str) -> ClusterUnavailable:
        """Remember the failure; an agent that does not answer is replaced at the next try."""
        self._failed = (time.monotonic(), reason)
        with self._lock:
            if self._proc is not None:
                terminate(self._proc, grace_s=2.0)
                self._proc = None
        return ClusterUnavailable(reason)

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            if not self._socket.exists():
                self._still_joining()
            elif self._joining_until:
                self._joining_until = 0.0
                log.info("ray agent started again (pid %d) for the cluster at %s", self._proc.pid, self.address)
            return
        if self._proc is not None:  # it exited: the cluster went away under it
            reason = log_tail(self.log_path, 300) or f"the Ray agent exited with status {self._proc.returncode}"
            self._proc = None
            self._failed = (time.monotonic(), f"the Ray cluster at {self.address} is unreachable: {reason}")
        if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_S:
            raise ClusterUnavailable(self._failed[1])
        if self._failed is None:
            self._start()  # the first agent (or the first after a success): wait for it
            return
        self._launch()  # a replacement: it joins in the background while calls keep failing at once
        self._joining_until = time.monotonic() + CONNECT_S
        raise ClusterUnavailable(self._failed[1])

    def _still_joining(self) -> None:
        """A replacement agent that has not joined yet: the last failure stands, until its time is up."""
        assert self._proc is not None
        if time.monotonic() > self._joining_until:
            reason = log_tail(self.log_path, 300) or "the Ray agent did not join in time"
            terminate(self._proc, grace_s=2.0)
            self._proc = None
            self._failed = (time.monotonic(), f"the Ray cluster at {self.address} is unreachable: {reason}")
        raise ClusterUnavailable(self._failed[1] if self._failed else f"the Ray cluster at {self.address}: joining")

    def _launch(self) -> None:
        self._socket.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "modelport.raycluster.agent", "--address", self.address]
        command += ["--namespace", self.namespace, "--socket", str(self._socket), "--parent", str(os.getpid())]
        # No secret reaches it: the cluster's address and Ray's own settings only.
        env = forkserver.child_env({k: v for k, v in os.environ.items() if k.startswith("RAY_")})
        with open(self.log_path, "wb") as out:  # a fresh log per agent: its last line is the reason it failed
            self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    def _start(self) -> None:
        self._launch()
        assert self._proc is not None
        deadline = time.monotonic() + CONNECT_S
        while not self._socket.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                reason = log_tail(self.log_path, 300) or "the Ray agent did not start in time"
                terminate(self._proc, grace_s=2.0)
                self._proc = None
                self._failed = (time.monotonic(), f"the Ray cluster at {self.address} is unreachable: {reason}")
                raise ClusterUnavailable(self._failed[1])
            time.sleep(0.05)
        log.info("ray agent started (pid %d) for the cluster at %s", self._proc.pid, self.address)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                terminate(self._proc, grace_s=5.0)
                self._proc = None
        self._socket.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._folder.rmdir()
