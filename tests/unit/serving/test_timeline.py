"""The console's charts' data: each model's last hour in 10-second buckets."""

from __future__ import annotations

import pytest

from modelport.serving import timeline
from modelport.serving.observe import Kind, Outcome, Served, percentile_of
from modelport.serving.timeline import BUCKET_S, KEEP_S, Timeline


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def served(model: str, tokens: int, seconds: float, outcome: Outcome = Outcome.OK) -> Served:
    return Served("acct", model, Kind.TEXT, "torch", 5, tokens, outcome, seconds)


def test_requests_tokens_and_timings_land_in_their_bucket() -> None:
    clock = Clock()
    t = Timeline(clock)
    for i in range(4):
        t.first_token("a/m", 0.1 * (i + 1))
        t.finished(served("a/m", 20, 1.0 + i))
    t.finished(served("a/m", 0, 0.5, Outcome.ERROR))
    clock.now += BUCKET_S  # the next bucket: one more request
    t.finished(served("a/m", 10, 2.0))
    points = t.series("a/m")["points"]
    assert len(points) == KEEP_S // BUCKET_S and points[-1]["t"] - points[0]["t"] == KEEP_S - BUCKET_S
    busy, last = points[-2], points[-1]
    assert (busy["requests"], busy["errors"], busy["requests_per_s"], busy["tokens_per_s"]) == (5, 1, 0.5, 8.0)
    assert (busy["ttft_ms_p50"], busy["ttft_ms_p95"]) == (200.0, 400.0)
    assert (busy["latency_ms_p50"], busy["latency_ms_p99"]) == (2000.0, 4000.0)
    assert (last["requests"], last["tokens_per_s"], last["ttft_ms_p50"]) == (1, 1.0, None)
    assert all(p["requests"] == 0 and p["latency_ms_p50"] is None for p in points[:-2])  # quiet: present, empty


def test_an_hour_later_the_old_buckets_are_gone_and_other_models_are_apart() -> None:
    clock = Clock()
    t = Timeline(clock)
    t.finished(served("a/m", 3, 1.0))
    t.finished(served("b/other", 3, 1.0))
    assert sum(p["requests"] for p in t.series("a/m", 60)["points"]) == 1
    assert len(t.series("a/m", 60)["points"]) == 60 // BUCKET_S
    clock.now += KEEP_S
    assert sum(p["requests"] for p in t.series("a/m")["points"]) == 0
    assert sum(p["requests"] for p in t.series("nobody/x")["points"]) == 0


def test_memory_is_bounded_whatever_the_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeline, "MAX_MODELS", 3)
    t = Timeline(Clock())
    for i in range(1000):
        t.first_token("a/m", i / 1000)
        t.finished(served("a/m", 1, i / 1000))
    bucket = t._models["a/m"][-1]
    assert len(bucket.ttft) == len(bucket.latency) == timeline.SAMPLES and bucket.requests == 1000
    assert 300 < (t.series("a/m")["points"][-1]["latency_ms_p50"] or 0) < 700  # a fair sample of 0..999 ms
    for name in ("a/1", "a/2", "a/3"):
        t.finished(served(name, 1, 1.0))
    assert list(t._models) == ["a/1", "a/2", "a/3"]  # the least recently active went


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile_of([], 50) is None
    assert percentile_of([3.0], 99) == 3.0
    assert [percentile_of([1.0, 2.0, 3.0, 4.0], q) for q in (25, 50, 95)] == [1.0, 2.0, 4.0]
