"""``EnginePool``: the serverless engine, as ``MODELPORT_ENGINE_WORKERS`` engine processes.

To the inference service the pool is one ``Engine``. Behind it, each request goes to a worker process
(``host.py``) over the engine protocol (``ipc.py``), chosen like Ray Serve's model multiplexing or
SGLang's cache-aware router choose theirs:

1. a worker that already has the request's base model *and* adapter loaded, the least loaded of them;
2. else one that has the base model (an adapter loads in milliseconds next to a base model's seconds);
3. else, or when those are all at their ``max_num_seqs``, the least loaded worker (of equals, the one with
   the fewest models), which loads it.

The pool remembers what it sent where; a worker's own memory budget may evict a model, which then
just loads again. The workers are forked from the server's fork server (``modelport/forkserver.py``),
which has torch and transformers imported: a start or a restart takes milliseconds, not the seconds of
those imports. They start with the server when it has models, else with the first request that needs
one (a new install that only ingests never starts them), and are watched by a thread: one that exits is
started again at once, its in-flight requests having already failed with ``engine_restarted`` (their
connections ended with it); one that keeps failing to start fails requests with its log's last lines
instead of making them wait. With ``MODELPORT_ENGINE_SOCKETS`` the pool starts none: it routes to the
processes listed there (started by hand or by a supervisor of the operator's) and only asks each, every
second, whether it still answers. With ``remote`` (serverless engines on a Ray cluster,
``endpoints/serverless.py``) the pool routes to those instead, by the same rules, learning what each holds
from the engine itself; it starts its own processes only while the cluster cannot serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelport.errors import EngineFailed, EngineOverloaded
from modelport.forkserver import ForkFailed
from modelport.serving.engine import Artifact, GenerationRequest, Pooling, TokenStep
from modelport.serving.host import (
    EngineProcess,
    EngineSpec,
    engine_settings,
    exit_reason,
    fork_engine,
    log_tail,
    terminate,
)
from modelport.serving.ipc import EngineAddress, EngineClient, probe
from modelport.settings import Settings

log = logging.getLogger(__name__)

WATCH_S = 0.1  # how often the watcher looks at the processes it started
PROBE_S = 1.0  # how often it asks a ready process whether it still answers
EXTERNAL_WAIT_S = 5.0  # how long a request waits for a process started by others to answer
EXTERNAL_SILENCE_S = 3.0  # a process started by others that answers nothing this long is left out
REMOTE_WAIT_S = 60.0  # how long a request waits for a remote engine to be ready (actors start in seconds)
HUNG_S = 30.0  # a process of ours that answers nothing this long is stuck: it is killed and restarted
FAILED_STARTS = 3  # a worker that exits this many times in a row before it ever answered is broken


@dataclass
class _Worker:
    index: int
    client: EngineClient  # one per socket for the worker's life: in-flight counts survive a restart
    log_path: Path | None  # None: started by someone else (MODELPORT_ENGINE_SOCKETS), not ours to start
    proc: EngineProcess | None = None
    ready: bool = False  # answers, and may be sent requests
    launched: float = 0.0
    next_launch: float = 0.0  # a worker in a crash loop waits before its next start
    asked: float = 0.0  # the last time the watcher asked it whether it answers
    silent_since: float | None = None  # since when it has answered nothing, while ready
    restarts: int = 0
    failed_starts: int = 0  # exits before it answered, in a row
    bases: set[str] = field(default_factory=set)  # what the pool has sent here: the affinity
    adapters: set[str] = field(default_factory=set)
    name: str = ""  # a remote engine's label; ours are "worker-<index>"
    told: dict[str, list[str]] | None = None  # the holdings a remote engine last reported (a new dict each time)

    @property
    def label(self) -> str:
        return self.name or f"worker-{self.index}"

    @property
    def socket(self) -> EngineAddress:
        return self.client.path

    @property
    def load(self) -> int:
        return self.client.in_flight

    @property
    def alive(self) -> bool:
        """Not yet seen dead: between a crash and the watcher's next look, requests must not be sent here
        (``poll`` reaps an exited child at once; a process started by others is asked by the watcher)."""
        return self.proc is None or self.proc.poll() is None

    def has(self, base: str, adapter: str | None) -> bool:
        return base in self.bases and (adapter is None or adapter in self.adapters)

    def forget(self) -> None:
        """Not ready, and nothing loaded any more as far as routing knows."""
        self.ready = False
        self.silent_since = None
        self.bases.clear()
        self.adapters.clear()


@dataclass(frozen=True)
class RemoteEngine:
    """An engine the pool did not start and may route to (a serverless actor on a Ray cluster)."""

    label: str
    client: EngineClient
    models: dict[str, list[str]] | None  # base id → resident adapter ids, as it last said; None: not yet


class RemoteEngines(Protocol):
    def usable(self) -> bool:
        """Whether serverless requests should wait for these engines rather than this server's own."""
        ...

    def engines(self) -> list[RemoteEngine]:
        """The ones that answer now."""
        ...


@dataclass(frozen=True)
class WorkerState:
    """One worker as ``stats()`` and ``/metrics`` show it."""

    label: str
    pid: int | None
    ready: bool
    in_flight: int
    restarts: int


class EnginePool:
    def __init__(self, settings: Settings, remote: RemoteEngines | None = None) -> None:
        self.settings = settings
        self.name: str = settings.engine
        self.remote = remote
        self._remote_workers: dict[str, _Worker] = {}  # by label: their affinity and load, across requests
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sockets: Path | None = None
        self._broken = False  # every start of a worker ends before it answers

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, *, now: bool = False) -> None:
        """``now``: start the workers at once; otherwise they start with the first request that needs one."""
        if now and self.remote is None:  # on a cluster, ours start only if the cluster cannot serve
            self._ensure_started()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:
            if w.proc is not None:
                terminate(w.proc)
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._workers = self._external() or self._own()
            self._thread = threading.Thread(target=self._watch, name="engine-pool", daemon=True)
            self._thread.start()

    def _external(self) -> list[_Worker]:
        paths = [p.strip() for p in self.settings.engine_sockets.split(",") if p.strip()]
        return [_Worker(i, EngineClient(Path(p), self.name, f"engine at {p}"), None) for i, p in enumerate(paths)]

    def _own(self) -> list[_Worker]:
        # Unix socket paths are short (108 bytes): a private folder of their own under /tmp.
        self._sockets = Path(tempfile.mkdtemp(prefix="modelport-engines-"))
        logs = self.settings.data_dir / "engines"
        logs.mkdir(parents=True, exist_ok=True)
        return [
            _Worker(i, EngineClient(self._sockets / f"w{i}.sock", self.name, f"worker {i}"), logs / f"worker-{i}.log")
            for i in range(self.settings.engine_workers)
        ]

    # --- the watcher -------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stopping.is_set():
            for w in list(self._workers):
                if self._stopping.is_set():
                    return
                try:
                    self._tend(w)
                except Exception:
                    log.exception("engine worker %d: watching it failed; retrying", w.index)
            self._stopping.wait(WATCH_S)

    def _tend(self, w: _Worker) -> None:
        now = time.monotonic()
        if w.log_path is None:
            self._ask(w, now)
        elif w.proc is None:
            if now >= w.next_launch:
                self._launch(w)
        elif (code := w.proc.poll()) is not None:
            self._died(w, code)
        elif not w.ready:
            self._check_ready(w, now)
        else:
            self._check_alive(w, now)

    def _ask(self, w: _Worker, now: float) -> None:
        """A process started by others: ready while it answers; left out (its affinity with it) once it
        has answered nothing for ``EXTERNAL_SILENCE_S``, one slow answer under load is not enough."""
        if now - w.asked < PROBE_S:
            return
        w.asked = now
        if probe(w.socket, timeout=0.5) is not None:
            w.silent_since = None
            if not w.ready:
                w.ready = True
                log.info("engine at %s: ready", w.socket)
            return
        w.silent_since = w.silent_since or now
        if w.ready and now - w.silent_since >= EXTERNAL_SILENCE_S:
            with self._lock:
                w.forget()
            w.restarts += 1
            log.warning("engine at %s stopped answering", w.socket)

    def _check_alive(self, w: _Worker, now: float) -> None:
        """A ready process of ours that is alive but answers nothing (stopped, a hung device call) would
        hold every request sent to it forever: past ``HUNG_S`` it is killed, and so restarted."""
        if now - w.asked < PROBE_S:
            return
        w.asked = now
        if probe(w.socket, timeout=PROBE_S) is not None:
            w.silent_since = None
            return
        w.silent_since = w.silent_since or now
        if now - w.silent_since >= HUNG_S and w.proc is not None:
            log.warning("engine worker %d answered nothing for %.0f s; killing it", w.index, now - w.silent_since)
            w.proc.kill()

    def _launch(self, w: _Worker) -> None:
        assert self._sockets is not None and w.log_path is not None
        spec = EngineSpec(os.getpid(), engine_settings(self.settings), env=self._env())
        try:
            # Not under the lock: the first fork waits seconds while the fork server imports torch.
            timeout = self.settings.replica_start_timeout_s
            sock = self._sockets / f"w{w.index}.sock"  # ours: a Unix socket in the pool's folder
            proc = fork_engine(spec, self._sockets / f"w{w.index}.json", sock, w.log_path, timeout=timeout)
        except ForkFailed as e:
            log.warning("engine worker %d: %s", w.index, e)
            self._start_failed(w, f"{e} (the server's log above says why)")
            return
        with self._lock:  # stop() takes the workers under this lock: nothing starts after it
            stopped = self._stopping.is_set()
            if not stopped:
                w.proc = proc
        if stopped:
            terminate(proc)
            return
        w.launched = time.monotonic()
        log.info("engine worker %d: started (pid %d)", w.index, proc.pid)

    def _env(self) -> dict[str, str]:
        """On CPU, an equal share of the cores per worker: N torch processes each using every core would
        fight over them (the user's own OMP_NUM_THREADS wins)."""
        if self.settings.engine_workers == 1 or "OMP_NUM_THREADS" in os.environ:
            return {}
        cores = len(os.sched_getaffinity(0))
        return {"OMP_NUM_THREADS": str(max(1, cores // self.settings.engine_workers))}

    def _died(self, w: _Worker, code: int) -> None:
        was_ready = w.ready
        with self._lock:
            w.forget()
            w.proc = None
        w.restarts += 1
        log.warning("engine worker %d %s; starting it again", w.index, exit_reason(code))
        if was_ready:
            w.failed_starts = 0
        else:
            self._start_failed(w, "its last output: " + (log_tail(w.log_path) if w.log_path is not None else ""))

    def _start_failed(self, w: _Worker, why: str) -> None:
        w.failed_starts += 1
        if w.failed_starts >= FAILED_STARTS:
            # Its log may name other tenants' models: it goes to the server's log, not to a client.
            self._broken = True
            log.error("engine worker %d fails to start; %s", w.index, why)
            w.next_launch = time.monotonic() + min(30.0, float(w.failed_starts))  # a crash loop must not spin

    def _check_ready(self, w: _Worker, now: float) -> None:
        if probe(w.socket, timeout=0.5) is not None:
            with self._lock:
                w.ready, w.asked, w.silent_since = True, now, None
            w.failed_starts, self._broken = 0, False
            log.info("engine worker %d: ready", w.index)
        elif now - w.launched > self.settings.replica_start_timeout_s and w.proc is not None:
            log.warning("engine worker %d did not answer in time; killing it", w.index)
            w.proc.kill()

    # --- routing -----------------------------------------------------------------------------------
    async def _route(self, base: str, adapter: str | None) -> EngineClient:
        """The worker for ``base`` (and ``adapter``): one that has them, else the least loaded."""
        if self.remote is not None and self.remote.usable():
            client = await self._route_remote(self.remote, base, adapter)
            if client is not None:
                return client
        self._ensure_started()
        external = bool(self.settings.engine_sockets)
        deadline = time.monotonic() + (EXTERNAL_WAIT_S if external else self.settings.replica_start_timeout_s)
        while True:
            with self._lock:
                ready = [w for w in self._workers if w.ready and w.alive]
                if ready:
                    return self._take(ready, base, adapter)
            if self._broken:
                raise EngineFailed("the engine processes fail to start; the server's log says why")
            if time.monotonic() > deadline or self._stopping.is_set():
                where = " at MODELPORT_ENGINE_SOCKETS" if external else ""
                raise EngineOverloaded(f"no engine process{where} is ready to serve; retry")
            await asyncio.sleep(0.02)

    async def _route_remote(self, remote: RemoteEngines, base: str, adapter: str | None) -> EngineClient | None:
        """A remote engine for the request, waiting while they start; None once the cluster cannot serve."""
        deadline = time.monotonic() + min(REMOTE_WAIT_S, self.settings.replica_start_timeout_s)
        while remote.usable():
            engines = remote.engines()
            if engines:
                with self._lock:
                    return self._take(self._sync_remote(engines), base, adapter)
            if time.monotonic() > deadline or self._stopping.is_set():
                raise EngineOverloaded("no serverless engine on the Ray cluster is ready to serve; retry")
            await asyncio.sleep(0.05)
        return None

    def _sync_remote(self, engines: list[RemoteEngine]) -> list[_Worker]:
        """The remote engines as workers; what one holds is what it last reported, plus what was sent since."""
        workers = []
        for e in engines:
            w = self._remote_workers.get(e.label)
            if w is None or w.client is not e.client:  # new, or a replacement under the same label
                w = self._remote_workers[e.label] = _Worker(len(self._remote_workers), e.client, None, name=e.label)
            w.ready = True
            if e.models is not None and e.models is not w.told:
                w.told = e.models
                w.bases = set(e.models)
                w.adapters = {a for adapters in e.models.values() for a in adapters}
            workers.append(w)
        return workers

    def _take(self, ready: list[_Worker], base: str, adapter: str | None) -> EngineClient:
        """The chosen worker's client, remembering what was sent there (under the lock)."""
        w = self._choose(ready, base, adapter)
        w.bases.add(base)
        if adapter is not None:
            w.adapters.add(adapter)
        return w.client

    def _choose(self, ready: list[_Worker], base: str, adapter: str | None) -> _Worker:
        for hits in ([w for w in ready if w.has(base, adapter)], [w for w in ready if w.has(base, None)]):
            best = min(hits, key=lambda w: w.load, default=None)
            if best is not None and best.load < self.settings.max_num_seqs:
                return best
        # A model new to all of them: the least loaded, and of the idle ones the one holding the fewest
        # models, so that models spread over the workers' memory rather than evict each other on one.
        return min(ready, key=lambda w: (w.load, len(w.bases)))

    # --- the Engine interface ----------------------------------------------------------------------
    async def prepare(self, request: GenerationRequest) -> None:
        client = await self._route(request.base.id, request.adapter.id if request.adapter else None)
        await client.prepare(request)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        client = await self._route(request.base.id, request.adapter.id if request.adapter else None)
        stream = client.generate(request)
        try:
            async for step in stream:
                yield step
        finally:
            await stream.aclose()  # closing early must reach the worker: it frees the sequence's row

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        client = await self._route(model.id, None)
        return await client.embed(model, batch, pooling)

    # --- what it shows -----------------------------------------------------------------------------
    def workers(self) -> list[WorkerState]:
        with self._lock:
            return [
                WorkerState(w.label, w.proc.pid if w.proc is not None else None, w.ready, w.load, w.restarts)
                for w in self._all()
            ]

    def _all(self) -> list[_Worker]:
        """Ours, then the remote engines that answer now."""
        return self._workers + (self._sync_remote(self.remote.engines()) if self.remote is not None else [])

    def worker_stats(self) -> list[tuple[str, dict[str, Any]]]:
        """Each ready worker's engine ``stats()``, asked over its socket (blocking: scrapes run in threads)."""
        with self._lock:
            ready = [(w.label, w.socket) for w in self._all() if w.ready]
        return [(label, stats) for label, path in ready if (stats := probe(path)) is not None]

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "workers": [asdict(w) for w in self.workers()]}
