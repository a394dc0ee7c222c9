"""Serverless models on a Ray cluster: a pool of engine actors that any base model and adapter may use.

With ``MODELPORT_RAY_ADDRESS`` and ``MODELPORT_RAY_SERVERLESS_REPLICAS`` > 0, the serverless engine is
not the API server's own processes but ``N`` actors on the cluster (``serverless.pool.<index>.<launch>``),
each an engine with no model of its own: it fetches from the blob store, into its node's cache, whatever
base model and adapter a request names (``raycluster/replica.py``), and keeps them under its memory
budget (LRU). This is Ray Serve's model multiplexing with adapters as the multiplexed ids: the serverless
router (``serving/pool.py``) sends a request to an actor that already holds its adapter, else one that
holds its base model, else the least loaded. What each actor holds is read from the actor itself once a
second (its engine's ``stats``), so every API server routes by the same truth, and an eviction is seen.

Who launches: the supervisor's thread calls ``tend`` every pass. The server holding the controller lease
keeps ``N`` actors running (adopting those a previous controller launched, replacing lost ones); the
others only find them. A cluster that does not answer, or no actor ready while the cluster is gone,
sends serverless requests back to the server's own engine processes (``usable``), so a lost head never
takes serverless models down with it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelport.endpoints.placement import SERVERLESS, RayPlacement, ReplicaHandle
from modelport.serving.host import EngineSpec, engine_settings
from modelport.serving.ipc import EngineClient, probe
from modelport.serving.pool import RemoteEngine
from modelport.settings import Settings

log = logging.getLogger(__name__)

PROBE_S = 1.0  # how often each actor is asked what it holds, and whether it answers
FOLLOW_S = 2.0  # how often a server that does not control looks for the actors
RETRY_MAX_S = 30.0  # an index whose actors keep failing before they answer waits up to this between launches


@dataclass
class _Member:
    index: int
    handle: ReplicaHandle
    started: float = field(default_factory=time.monotonic)
    engine: EngineClient | None = None  # set once it answers
    asked: float = 0.0
    models: dict[str, list[str]] | None = None  # base id → resident adapter ids, as it last said

    @property
    def ready(self) -> bool:
        return self.engine is not None


class ClusterServerless:
    """``serving.pool.RemoteEngines`` on a Ray cluster."""

    def __init__(self, settings: Settings, placement: RayPlacement) -> None:
        self.settings, self.placement = settings, placement
        self.want = settings.ray_serverless_replicas
        placement.reserved_bytes = self.want * settings.ray_serverless_memory_bytes
        placement.reserved_gpus = self.want * settings.ray_serverless_gpus
        self._members: dict[int, _Member] = {}
        self._lock = threading.Lock()
        self._adopted = False  # the controller's first pass takes over the actors that already run
        self._followed = 0.0
        self._failures: dict[int, tuple[int, float]] = {}  # index → (failed starts in a row, next launch at)

    # --- what the serverless router reads ------------------------------------------------------------
    def usable(self) -> bool:
        """Whether serverless requests should wait for this pool: the cluster answers, or an actor does."""
        return self.want > 0 and (self.placement.problem() is None or bool(self.engines()))

    def engines(self) -> list[RemoteEngine]:
        with self._lock:
            return [
                RemoteEngine(f"ray-{m.index}", m.engine, m.models)
                for m in self._members.values()
                if m.engine is not None
            ]

    # --- the supervisor's pass -------------------------------------------------------------------------
    def tend(self, controlling: bool) -> None:
        """One pass: the controller keeps ``want`` actors (with 0, it stops those a previous setting left);
        the others find them."""
        if controlling:
            self._control()
        elif self.want:
            self._adopted = False  # if it controls again later, it first takes over what runs then
            self._follow()
        self._probe()

    def _control(self) -> None:
        if not self._adopted:
            self._adopt()
        with self._lock:
            members = list(self._members.values())
        now = time.monotonic()
        for m in members:
            code = m.handle.poll()
            if code is not None:
                log.warning("serverless engine %d %s; launching another", m.index, m.handle.ended(code))
                self._drop(m)
            elif m.engine is None and now - m.started > self.settings.replica_start_timeout_s:
                log.warning("serverless engine %d did not start in time; launching another", m.index)
                self._drop(m)
            elif m.engine is not None:
                self._failures.pop(m.index, None)
        if self.placement.problem() is not None:
            return  # launching waits for a cluster that answers
        for index in sorted(set(range(self.want)) - set(self._members)):
            if self._failures.get(index, (0, 0.0))[1] > now:
                continue  # a crash loop must not launch an actor every pass
            handle = self.placement.launch_serverless(index, self._spec())
            log.info("serverless engine %d launched (%s)", index, handle.where)
            with self._lock:
                self._members[index] = _Member(index, handle)

    def _adopt(self) -> None:
        running = self._running()
        extra = []
        with self._lock:
            known = {m.handle.name for m in self._members.values()}
            for index, handle in running:
                if handle.name in known:
                    continue
                if index >= self.want or index in self._members:  # more than are wanted now, or a duplicate
                    extra.append(handle)
                    continue
                self._members[index] = _Member(index, handle)
        for handle in extra:
            log.info("stopping serverless engine actor %s: not wanted", handle.name)
            handle.stop()
        self._adopted = True

    def _follow(self) -> None:
        if time.monotonic() - self._followed < FOLLOW_S:
            return
        self._followed = time.monotonic()
        running = self._running()
        with self._lock:
            known = {m.handle.name: m for m in self._members.values()}
            self._members = {i: known.get(h.name) or _Member(i, h) for i, h in running}

    def _running(self) -> list[tuple[int, ReplicaHandle]]:
        """The pool's actors the cluster runs now, by index (a failed or duplicate launch may repeat one)."""
        return self.placement.running(SERVERLESS).get("pool", [])

    def _drop(self, m: _Member) -> None:
        """Stop it; one that never answered makes its index wait before the next launch (1, 2, 4 … 30 s)."""
        with self._lock:
            self._members.pop(m.index, None)
        if m.engine is None:
            failed = self._failures.get(m.index, (0, 0.0))[0] + 1
            self._failures[m.index] = (failed, time.monotonic() + min(RETRY_MAX_S, 2.0 ** (failed - 1)))
        m.handle.stop()

    def _probe(self) -> None:
        """Ask each actor whether it answers and what it holds (its engine's stats)."""
        now = time.monotonic()
        with self._lock:
            due = [m for m in self._members.values() if now - m.asked >= PROBE_S]
        for m in due:
            m.asked = now
            address = m.handle.address()
            stats = probe(address, timeout=0.5) if address is not None and m.handle.poll() is None else None
            if stats is None:
                if m.engine is not None:
                    log.warning("serverless engine %d stopped answering", m.index)
                m.engine, m.models = None, None
                continue
            m.models = _holdings(stats)
            if m.engine is None:
                assert address is not None
                m.engine = EngineClient(address, self.settings.engine, f"serverless engine {m.index}")
                log.info("serverless engine %d ready (%s)", m.index, m.handle.where)

    def _spec(self) -> EngineSpec:
        s = self.settings
        cores = max(1, int(s.ray_serverless_cpus))
        device = "cuda" if s.ray_serverless_gpus else "cpu"
        memory = s.ray_serverless_memory_bytes if device == "cpu" else 0  # on a GPU: its share of the GPU
        return EngineSpec(
            parent_pid=os.getpid(),
            settings=engine_settings(s, engine_device=device, engine_memory_bytes=memory, engine_workers=1),
            env={} if device == "cuda" else {"OMP_NUM_THREADS": str(cores)},
        )


def _holdings(stats: dict[str, Any]) -> dict[str, list[str]]:
    models = stats.get("models") or {}
    return {str(k): [str(a) for a in (v.get("adapters") or [])] for k, v in models.items() if isinstance(v, dict)}
