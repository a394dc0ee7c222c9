"""The Prometheus metrics of one app; ``GET /metrics`` (``api/metrics.py``) renders them.

Two kinds of numbers, every name prefixed ``modelport_``:

- events, counted as they happen: HTTP requests by route template and status (the ASGI middleware in
  ``api/metrics.py``), token timings and tokens by model (``InferenceMetrics``, an inference
  ``Observer``), and how long each ingest job stage took (``JobMetrics.stage_ended``, the job workers'
  ``on_stage_end``);
- state, read at each scrape by collectors: jobs by type and state (a count of rows), the load of
  every engine worker (running and queued sequences, loaded models and adapters, weights and KV-cache
  bytes), and the replicas of every dedicated endpoint.

Each app has a ``CollectorRegistry`` of its own, never the process-wide default one: tests build many
apps in one process, and two apps must not count into each other.

Model names are tenants' words, so every label by model goes through a ``LabelCap``: the first
``MAX_MODEL_LABELS`` distinct names get a series of their own and the rest share ``other``, so no
tenant can grow this process's memory (or the Prometheus server's) by naming models.

There are no engine worker processes yet: the shared ("serverless") engine runs in the API process and
reports as worker ``api``. A worker process will report the same ``WorkerLoad`` (built from its engine's
``stats()``), and ``Metrics.watch_serving`` takes any number of sources.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from modelport.endpoints.supervisor import ReplicaLoad
from modelport.jobs.progress import StageTimed
from modelport.jobs.states import JobStatus, JobType
from modelport.serving.observe import Served
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Job

log = logging.getLogger(__name__)

MAX_MODEL_LABELS = 200  # distinct model names with series of their own; the rest are counted as OTHER
OTHER = "other"  # never a model's name: those are always "<account>/<name>"
UNMATCHED = "unmatched"  # the route of a request no route answered (404): its raw path is the client's
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Seconds. The first token includes loading the model on a cold start (tens of seconds on a CPU).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STAGE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)


class LabelCap:
    """At most ``limit`` distinct values of a label; every later one is reported as ``OTHER``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


class HttpMetrics:
    """Requests by route template (never the raw path: it holds ids), method and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "modelport_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "modelport_http_request_duration_seconds",
            "Time from a request's arrival to the last byte of its response (a stream's end included).",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else OTHER  # the client's word: bounded here
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)


class InferenceMetrics:
    """The inference ``Observer`` (``serving/observe.py``): timings per token, tokens per request."""

    def __init__(self, registry: CollectorRegistry, models: LabelCap) -> None:
        self.models = models
        self.first_token_s = Histogram(
            "modelport_time_to_first_token_seconds",
            "Time from a request's acceptance to each of its sequences' first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_s = Histogram(
            "modelport_inter_token_latency_seconds",
            "Time between two consecutive tokens of a sequence.",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "modelport_prompt_tokens",
            "Prompt tokens of accepted requests (embedding inputs included).",
            ["model"],
            registry=registry,
        )
        self.generation_tokens = Counter(
            "modelport_generation_tokens",
            "Tokens generated, by the model the caller named.",
            ["model"],
            registry=registry,
        )
        self.requests = Counter(
            "modelport_inference_requests",
            "Accepted inference requests at their end, by model, kind (text, embedding) and outcome "
            "(ok, error, cancelled).",
            ["model", "kind", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "modelport_inference_request_duration_seconds",
            "Time from a request's acceptance to its end.",
            ["kind"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )

    def first_token(self, model: str, seconds: float) -> None:
        self.first_token_s.labels(self.models(model)).observe(seconds)

    def token(self, model: str, gap_s: float) -> None:
        self.inter_token_s.labels(self.models(model)).observe(gap_s)

    def finished(self, served: Served) -> None:
        model = self.models(served.model)
        self.prompt_tokens.labels(model).inc(served.prompt_tokens)
        self.generation_tokens.labels(model).inc(served.completion_tokens)
        self.requests.labels(model, served.kind, served.outcome).inc()
        self.duration.labels(served.kind).observe(served.seconds)


class JobMetrics:
    """How long ingest job stages take: the workers' ``on_stage_end`` (``jobs/progress.py``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stages = Histogram(
            "modelport_job_stage_duration_seconds",
            "Duration of each ingest job stage (downloading, extracting, validating...), by whether the job "
            "went on past it (ok) or ended in it (failed). Counted by this process's workers.",
            ["stage", "outcome"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )

    def stage_ended(self, timed: StageTimed) -> None:
        self.stages.labels(timed.stage, "ok" if timed.ok else "failed").observe(timed.seconds)


class JobStates:
    """Collector: jobs by type and state, counted in the database at each scrape (every process's jobs)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        counts = {(str(t), str(s)): 0 for t in JobType for s in JobStatus}
        try:
            with self.db.read() as s:
                rows = s.execute(select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status)).all()
        except SQLAlchemyError as e:  # the other families still answer; this one is missing from this scrape
            log.warning("metrics: could not count jobs (%s)", type(e).__name__)
            return
        counts |= {(job_type, status): n for job_type, status, n in rows}
        family = GaugeMetricFamily("modelport_jobs", "Ingest jobs by type and state.", labels=["type", "state"])
        for (job_type, status), n in sorted(counts.items()):
            family.add_metric([job_type, status], n)
        yield family


@dataclass(frozen=True)
class WorkerLoad:
    """One engine worker's load at a scrape. ``None``: the engine does not say (the fake engine)."""

    worker: str
    engine: str
    running: int = 0
    queued: int = 0
    models: int = 0
    adapters: int = 0
    weights_bytes: int | None = None
    weights_capacity_bytes: int | None = None
    kv_used_bytes: int | None = None
    kv_capacity_bytes: int | None = None
    dtype: str | None = None  # what the engine runs weights in ("bfloat16"; "stored" on CUDA)
    prefix_cache_bytes: int | None = None
    prefix_cache_reused_tokens: int | None = None  # since the engine started

    @classmethod
    def from_stats(cls, worker: str, stats: Mapping[str, Any]) -> WorkerLoad:
        """From an engine's ``stats()``: the torch engine's rows per loaded model and its sequence memory
        (KV caches and scratch), or the fake engine's ``running``."""
        rows: list[Mapping[str, Any]] = list((stats.get("models") or {}).values())
        prefix: Mapping[str, Any] = stats.get("prefix_cache") or {}
        return cls(
            worker=worker,
            engine=str(stats.get("engine", "unknown")),
            running=int(stats.get("running", 0)) + sum(int(m.get("running", 0)) for m in rows),
            queued=sum(int(m.get("waiting", 0)) for m in rows),
            models=len(rows),
            adapters=sum(len(m.get("adapters") or ()) for m in rows),
            weights_bytes=sum(int(m.get("bytes", 0)) for m in rows) if "models" in stats else None,
            weights_capacity_bytes=_int_or_none(stats.get("budget_bytes")),
            kv_used_bytes=_int_or_none(stats.get("sequence_bytes")),
            kv_capacity_bytes=_int_or_none(stats.get("sequence_budget_bytes")),
            dtype=str(stats["dtype"]) if stats.get("dtype") else None,
            prefix_cache_bytes=_int_or_none(prefix.get("bytes")),
            prefix_cache_reused_tokens=_int_or_none(prefix.get("reused_tokens")),
        )


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


WorkerSource = Callable[[], Iterable[WorkerLoad]]
ReplicaSource = Callable[[], Iterable[ReplicaLoad]]

_WORKER_GAUGES = (  # name, help, field of WorkerLoad
    ("modelport_worker_running_sequences", "Sequences an engine worker is generating.", "running"),
    ("modelport_worker_queued_sequences", "Sequences waiting in an engine worker's queue.", "queued"),
    ("modelport_worker_loaded_models", "Base models an engine worker holds loaded.", "models"),
    ("modelport_worker_loaded_adapters", "LoRA adapters resident on an engine worker's loaded models.", "adapters"),
    ("modelport_worker_weights_bytes", "Bytes of loaded weights.", "weights_bytes"),
    (
        "modelport_worker_weights_capacity_bytes",
        "The weights' memory budget (LRU eviction past it).",
        "weights_capacity_bytes",
    ),
    ("modelport_kv_cache_used_bytes", "Memory held by running sequences (KV caches and scratch).", "kv_used_bytes"),
    ("modelport_kv_cache_capacity_bytes", "The running sequences' memory budget.", "kv_capacity_bytes"),
    ("modelport_prefix_cache_bytes", "Memory held by cached prompt prefixes.", "prefix_cache_bytes"),
)


class Workers:
    """Collector: every engine worker's load, read from its sources at each scrape."""

    def __init__(self, sources: Sequence[WorkerSource]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        loads = [load for source in self.sources for load in source()]
        for name, documentation, attribute in _WORKER_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["worker", "engine"])
            for load in loads:
                value = getattr(load, attribute)
                if value is not None:
                    family.add_metric([load.worker, load.engine], value)
            yield family
        precision = GaugeMetricFamily(
            "modelport_worker_precision_info",
            "The dtype an engine worker runs weights in, chosen at its start (always 1).",
            labels=["worker", "engine", "dtype"],
        )
        reused = CounterMetricFamily(
            "modelport_prefix_cache_reused_tokens",
            "Prompt tokens taken from the prefix cache instead of prefilled.",
            labels=["worker", "engine"],
        )
        for load in loads:
            if load.dtype is not None:
                precision.add_metric([load.worker, load.engine, load.dtype], 1)
            if load.prefix_cache_reused_tokens is not None:
                reused.add_metric([load.worker, load.engine], load.prefix_cache_reused_tokens)
        yield precision
        yield reused


class Replicas:
    """Collector: each dedicated endpoint's replica processes (labelled by endpoint id: names change)."""

    def __init__(self, source: ReplicaSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        launched, ready, in_flight = (
            GaugeMetricFamily("modelport_endpoint_replicas", "Replica processes launched.", labels=["endpoint"]),
            GaugeMetricFamily("modelport_endpoint_replicas_ready", "Replicas ready to answer.", labels=["endpoint"]),
            GaugeMetricFamily(
                "modelport_endpoint_in_flight_sequences",
                "Sequences this server has sent to the endpoint's replicas and not yet seen end.",
                labels=["endpoint"],
            ),
        )
        totals: dict[str, list[int]] = {}
        for replica in self.source():
            row = totals.setdefault(replica.endpoint_id, [0, 0, 0])
            row[0], row[1], row[2] = row[0] + 1, row[1] + replica.ready, row[2] + replica.in_flight
        for endpoint_id, (n, n_ready, n_in_flight) in sorted(totals.items()):
            launched.add_metric([endpoint_id], n)
            ready.add_metric([endpoint_id], n_ready)
            in_flight.add_metric([endpoint_id], n_in_flight)
        yield from (launched, ready, in_flight)


class Metrics:
    """Every metric of one app, in a registry of its own; ``render`` is the body of ``GET /metrics``."""

    def __init__(self, db: Database, *, max_models: int = MAX_MODEL_LABELS) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.inference = InferenceMetrics(self.registry, LabelCap(max_models))
        self.jobs = JobMetrics(self.registry)
        self.registry.register(JobStates(db))

    def watch_serving(self, workers: Sequence[WorkerSource], replicas: ReplicaSource) -> None:
        """Read the serving side's load at each scrape: a server that serves calls this once, from the
        composition root, when its engine and supervisor exist (``modelport worker`` has neither)."""
        self.registry.register(Workers(workers))
        self.registry.register(Replicas(replicas))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition the scraper asked for (``Accept``: Prometheus text, or OpenMetrics) and its type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
