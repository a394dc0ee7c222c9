"""How a route's requests split between its deployments, and what each deployment's requests measured.

- ``shares``: each live deployment's share of the route's requests, from the traffic split's weights,
  with an A/B experiment dividing its control's share between its members by their percents.
- ``pick``: one deployment for one request, at random by share, among those that can answer now.
- ``TrafficStats``: per deployment, the latency and outcome of recent requests (a sliding window in
  memory), which rollout gates and shadow comparisons read. Like Envoy's outlier stats, they are this
  server's own measurements, gone on restart.
- ``MeteredEngine``: wraps the engine a request was routed to, so the request is timed and counted
  against its deployment; applies the test hook ``MODELPORT_FAULT_DELAYS``; and sends a copy of a
  sampled share of requests to shadow deployments, whose answers are read and dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from modelport.serving.engine import Artifact, Engine, GenerationRequest, Pooling, TokenStep
from modelport.serving.observe import percentile_of
from modelport.storage.db.tables import Experiment

log = logging.getLogger(__name__)

CONTROL = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"
WINDOW_CAP = 4096  # samples kept per deployment: enough for percentiles over a few minutes of a busy route


def shares(traffic: Sequence[dict[str, Any]], live: set[str], experiments: Sequence[Experiment]) -> dict[str, float]:
    """Each live deployment's share of requests (summing to 1, or empty when no weight is positive)."""
    weights = {t["deployment_id"]: float(t["weight"]) for t in traffic if t["deployment_id"] in live}
    total = sum(w for w in weights.values() if w > 0)
    out = {d: w / total for d, w in weights.items() if w > 0} if total > 0 else {}
    for x in experiments:
        if x.kind != "ab":
            continue
        control = next((m["deployment_id"] for m in x.members if m.get("role") == CONTROL), None)
        if control is None or control not in out:
            continue
        pool = out.pop(control)
        for m in x.members:
            if m["deployment_id"] in live:
                out[m["deployment_id"]] = out.get(m["deployment_id"], 0.0) + pool * int(m["percent"]) / 100
    return out


def pick(weights: dict[str, float], rng: random.Random | None = None) -> str | None:
    """One deployment id, at random by weight; None when no weight is positive."""
    items = [(d, w) for d, w in weights.items() if w > 0]
    if not items:
        return None
    point = (rng or random).random() * sum(w for _, w in items)
    for deployment_id, weight in items:
        point -= weight
        if point < 0:
            return deployment_id
    return items[-1][0]


def sampled(sampling: dict[str, Any], key_value: str | None, rng: random.Random | None = None) -> bool:
    """Whether a shadow experiment copies this request, by its ``rate``. ``keyBased`` hashes the request's
    key, so one key is always copied or never; without a key it draws at random like ``uniform``. The
    adaptive forms copy every request their QPS budget admits (``QpsBudget``)."""
    if "adaptiveUniform" in sampling or "adaptiveKeyBased" in sampling:
        return True
    spec = sampling.get("keyBased") or sampling.get("uniform") or {}
    rate = float(spec.get("rate", 0))
    if "keyBased" in sampling and key_value is not None:
        digest = hashlib.sha256(key_value.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate
    return (rng or random).random() < rate


class QpsBudget:
    """At most ``targetQps`` copies a second per shadow experiment (its adaptive sampling), as a token
    bucket holding one second's worth."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # experiment -> (tokens, when)
        self._lock = threading.Lock()

    def admit(self, experiment_id: str, sampling: dict[str, Any]) -> bool:
        spec = sampling.get("adaptiveUniform") or sampling.get("adaptiveKeyBased")
        if spec is None:
            return True
        qps, now = float(spec.get("targetQps", 0)), time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(experiment_id, (qps, now))
            tokens = min(qps, tokens + (now - then) * qps)
            admitted = tokens >= 1
            self._buckets[experiment_id] = (tokens - 1 if admitted else tokens, now)
        return admitted


@dataclass(frozen=True)
class Sample:
    at: float
    seconds: float
    ok: bool


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    p50: float | None
    p95: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class TrafficStats:
    def __init__(self) -> None:
        self._samples: dict[str, deque[Sample]] = {}
        self._totals: dict[str, list[int]] = {}  # deployment -> [requests, errors], since start
        self._lock = threading.Lock()

    def record(self, deployment_id: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self._samples.setdefault(deployment_id, deque(maxlen=WINDOW_CAP)).append(
                Sample(time.monotonic(), seconds, ok)
            )
            totals = self._totals.setdefault(deployment_id, [0, 0])
            totals[0] += 1
            totals[1] += 0 if ok else 1

    def totals(self, deployment_id: str) -> tuple[int, int]:
        with self._lock:
            requests, errors = self._totals.get(deployment_id, [0, 0])
        return requests, errors

    def window(self, deployment_id: str, seconds: float) -> list[Sample]:
        since = time.monotonic() - seconds
        with self._lock:
            return [s for s in self._samples.get(deployment_id, ()) if s.at >= since]

    def percentile(self, deployment_id: str, percentile: float, seconds: float) -> float | None:
        return percentile_of([s.seconds for s in self.window(deployment_id, seconds) if s.ok], percentile)

    def summary(self, deployment_id: str, seconds: float) -> Summary:
        samples = self.window(deployment_id, seconds)
        ok = [s.seconds for s in samples if s.ok]
        return Summary(len(samples), sum(1 for s in samples if not s.ok), percentile_of(ok, 50), percentile_of(ok, 95))


@dataclass
class Mirror:
    """A shadow target to copy a request to: its deployment, its engine, and its model's artifact."""

    experiment_id: str
    deployment_id: str
    engine: Engine
    artifact: Callable[[], Artifact]  # blocking (it may fetch files): called in a thread
    context_length: int
    on_done: Callable[[str, str, float, bool], None] = field(default=lambda *_: None)
    admit: Callable[[], bool] = field(default=lambda: True)  # False: too many copies already running there


class MeteredEngine:
    """The engine of the deployment a request was routed to, timed and counted against that deployment."""

    def __init__(
        self,
        inner: Engine,
        deployment_id: str,
        stats: TrafficStats,
        *,
        delay: float = 0.0,
        mirrors: Sequence[Mirror] = (),
        spawn: Callable[[Awaitable[None]], Any] | None = None,
    ) -> None:
        self.inner, self.deployment_id, self.traffic, self.delay = inner, deployment_id, stats, delay
        self.name = inner.name
        self.mirrors = list(mirrors)
        self._spawn = spawn or _background
        self._accepted = time.monotonic()

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()

    async def prepare(self, request: GenerationRequest) -> None:
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        try:
            await self.inner.prepare(request)
        except Exception:
            self._record(False)
            raise

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        for mirror in self.mirrors:
            self._spawn(_shadow(mirror, request))
        self.mirrors = []  # n > 1 choices: one copy per request
        ok = False
        try:
            async for step in self.inner.generate(request):
                yield step
            ok = True
        except GeneratorExit:  # the client went away: not the deployment's fault
            ok = True
            raise
        finally:
            self._record(ok)

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        ok = False
        try:
            vectors = await self.inner.embed(model, batch, pooling)
            ok = True
            return vectors
        finally:
            self._record(ok)

    def _record(self, ok: bool) -> None:
        self.traffic.record(self.deployment_id, time.monotonic() - self._accepted, ok)


_tasks: set[asyncio.Task[None]] = set()


def _background(coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)  # keep a reference until it ends (asyncio holds only weak ones)
    task.add_done_callback(_tasks.discard)


async def _shadow(mirror: Mirror, request: GenerationRequest) -> None:
    """Run a copy of ``request`` on the shadow deployment, read every token, and drop the answer."""
    if not mirror.admit():
        return
    started, ok = time.monotonic(), False
    try:
        artifact = await asyncio.to_thread(mirror.artifact)
        budget = max(1, mirror.context_length - len(request.prompt_ids))
        params = replace(request.params, max_tokens=min(request.params.max_tokens or budget, budget))
        copy = replace(request, request_id=f"shadow-{uuid.uuid4().hex[:12]}", base=artifact, params=params)
        await mirror.engine.prepare(copy)
        async for _ in mirror.engine.generate(copy):
            pass
        ok = True
    except Exception as e:  # a shadow's failure is recorded, never seen by the client
        log.info("shadow copy to %s failed: %s", mirror.deployment_id, e)
    finally:
        # Off the event loop: every so often it writes a comparison event to the database.
        seconds = time.monotonic() - started
        await asyncio.to_thread(mirror.on_done, mirror.experiment_id, mirror.deployment_id, seconds, ok)
