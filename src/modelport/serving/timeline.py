"""The last hour of each model's traffic, in 10-second buckets: what the console's charts draw.

An inference observer (``observe.py``) beside the Prometheus metrics and the usage ledger. Prometheus
keeps no history (a scraper does) and the usage ledger keeps days, so the console's charts of requests/s,
tokens/s, time to first token and latency percentiles read this instead: per model name as the caller
used it (a model, an adapter or an endpoint, each ``<account>/<name>``), one bucket per
``BUCKET_S`` seconds, the last ``KEEP_S`` seconds kept. Timings are kept as samples (at most
``SAMPLES`` a bucket, a reservoir beyond), so percentiles are exact at low traffic and close at high.

Memory is bounded whatever tenants do: at most ``MAX_MODELS`` names (the least recently active goes),
``KEEP_S / BUCKET_S`` buckets each, ``SAMPLES`` samples per bucket and kind. Each server keeps its own
(several servers behind a balancer each chart their share), and a restart starts it empty.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelport.serving.observe import Outcome, Served, percentile_of

BUCKET_S = 10
KEEP_S = 3600
SAMPLES = 200
MAX_MODELS = 2000


@dataclass
class _Bucket:
    start: int  # Unix seconds, a multiple of BUCKET_S
    requests: int = 0
    errors: int = 0
    tokens: int = 0  # completion tokens of the requests that ended in it
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    seen: list[int] = field(default_factory=lambda: [0, 0])  # samples offered (ttft, latency): the reservoir's n


def _sample(samples: list[float], seen: list[int], which: int, value: float) -> None:
    """Keep a uniform sample of at most SAMPLES values (reservoir sampling)."""
    seen[which] += 1
    if len(samples) < SAMPLES:
        samples.append(value)
    elif (slot := random.randrange(seen[which])) < SAMPLES:
        samples[slot] = value


class Timeline:
    """An ``Observer`` that buckets each model's requests; ``series`` reads one model's last hour."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._models: OrderedDict[str, deque[_Bucket]] = OrderedDict()
        self._lock = threading.Lock()  # observers run on the event loop; pages read from worker threads

    def _bucket(self, model: str) -> _Bucket:
        start = int(self.clock()) // BUCKET_S * BUCKET_S
        buckets = self._models.get(model)
        if buckets is None:
            buckets = self._models[model] = deque(maxlen=KEEP_S // BUCKET_S)
            if len(self._models) > MAX_MODELS:
                self._models.popitem(last=False)
        self._models.move_to_end(model)
        if not buckets or buckets[-1].start != start:
            buckets.append(_Bucket(start))
        return buckets[-1]

    # --- Observer -------------------------------------------------------------------------------------
    def first_token(self, model: str, seconds: float) -> None:
        with self._lock:
            b = self._bucket(model)
            _sample(b.ttft, b.seen, 0, seconds)

    def token(self, model: str, gap_s: float) -> None:
        pass  # tokens are counted when their request ends (``finished``)

    def finished(self, served: Served) -> None:
        with self._lock:
            b = self._bucket(served.model)
            b.requests += 1
            b.errors += served.outcome == Outcome.ERROR
            b.tokens += served.completion_tokens
            _sample(b.latency, b.seen, 1, served.seconds)

    # --- reading --------------------------------------------------------------------------------------
    def series(self, model: str, seconds: int = KEEP_S) -> dict[str, Any]:
        """The model's buckets of the last ``seconds``, oldest first, every bucket present (empty ones as
        zero traffic and no timings), as the console's charts and ``GET /api/v1/timeline`` give them."""
        now = int(self.clock()) // BUCKET_S * BUCKET_S
        first = now - (min(seconds, KEEP_S) // BUCKET_S - 1) * BUCKET_S
        with self._lock:
            kept = {b.start: b for b in self._models.get(model, ()) if b.start >= first}
            points = [_point(kept.get(t) or _Bucket(t)) for t in range(first, now + 1, BUCKET_S)]
        return {"model": model, "bucket_s": BUCKET_S, "points": points}


def _point(b: _Bucket) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "t": b.start,
        "requests": b.requests,
        "errors": b.errors,
        "requests_per_s": round(b.requests / BUCKET_S, 3),
        "tokens_per_s": round(b.tokens / BUCKET_S, 2),
        "ttft_ms_p50": ms(percentile_of(b.ttft, 50)),
        "ttft_ms_p95": ms(percentile_of(b.ttft, 95)),
        "latency_ms_p50": ms(percentile_of(b.latency, 50)),
        "latency_ms_p95": ms(percentile_of(b.latency, 95)),
        "latency_ms_p99": ms(percentile_of(b.latency, 99)),
    }
