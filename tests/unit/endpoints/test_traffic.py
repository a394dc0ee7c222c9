"""How a route's requests split: shares with A/B experiments, the weighted pick, shadow sampling and its
QPS budget, and the latency percentiles the gates read."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from modelport.endpoints import traffic
from modelport.endpoints.traffic import (
    MeteredEngine,
    Mirror,
    QpsBudget,
    TrafficStats,
    pick,
    sampled,
    shares,
)
from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, GenerationRequest, SamplingParams, TokenStep
from modelport.serving.observe import percentile_of
from modelport.storage.db.tables import Experiment


def _ab(members: list[tuple[str, int, str]]) -> Experiment:
    rows = [{"deployment_id": d, "percent": p, "role": f"AB_EXPERIMENT_MEMBER_ROLE_{r}"} for d, p, r in members]
    return Experiment(kind="ab", members=rows)


def test_shares_follow_weights_and_ab_experiments_divide_the_controls_share() -> None:
    split = [{"deployment_id": "a", "weight": 3.0}, {"deployment_id": "b", "weight": 1.0}]
    assert shares(split, {"a", "b"}, []) == {"a": 0.75, "b": 0.25}
    assert shares(split, {"a"}, []) == {"a": 1.0}  # a shadow (not live) takes none
    assert shares([{"deployment_id": "a", "weight": 0.0}], {"a"}, []) == {}
    ab = _ab([("a", 80, "CONTROL"), ("c", 20, "VARIANT")])
    assert shares(split, {"a", "b", "c"}, [ab]) == pytest.approx({"a": 0.6, "b": 0.25, "c": 0.15})


def test_pick_is_random_by_weight() -> None:
    rng = random.Random(7)
    counts = Counter(pick({"a": 0.8, "b": 0.2, "z": 0.0}, rng) for _ in range(10_000))
    assert set(counts) == {"a", "b"} and 7_700 < counts["a"] < 8_300
    assert pick({"a": 0.0}) is None


def test_sampling_by_rate_by_key_and_under_a_qps_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1)
    uniform: dict[str, Any] = {"uniform": {"rate": 0.25}}
    assert 2_300 < sum(sampled(uniform, None, rng) for _ in range(10_000)) < 2_700
    keyed: dict[str, Any] = {"keyBased": {"key": "user", "rate": 0.5}}
    # One key is always copied or never; without a key it draws at random.
    assert len({sampled(keyed, "alice", rng) for _ in range(50)}) == 1
    assert 4_600 < sum(sampled(keyed, None, rng) for _ in range(10_000)) < 5_400
    now = [100.0]
    monkeypatch.setattr(traffic.time, "monotonic", lambda: now[0])
    budget, adaptive = QpsBudget(), {"adaptiveUniform": {"targetQps": 5, "window": "10s"}}
    assert sampled(adaptive, None) and sum(budget.admit("x", adaptive) for _ in range(20)) == 5
    now[0] += 0.4  # two more tokens
    assert sum(budget.admit("x", adaptive) for _ in range(20)) == 2
    assert budget.admit("y", adaptive) and budget.admit("x", uniform)


def test_stats_summarise_a_window() -> None:
    stats = TrafficStats()
    for i in range(1, 21):
        stats.record("a", i / 100, ok=i != 20)
    summary = stats.summary("a", 60)
    assert (summary.requests, summary.errors, summary.error_rate) == (20, 1, 0.05)
    assert summary.p50 == pytest.approx(0.10) and summary.p95 == pytest.approx(0.19)
    assert stats.totals("a") == (20, 1) and stats.summary("b", 60).p50 is None
    assert percentile_of([], 50) is None and percentile_of([3.0], 99) == 3.0


class _Engine:
    """Two tokens per request; remembers what it was sent."""

    name = "fake"

    def __init__(self) -> None:
        self.sent: list[GenerationRequest] = []

    async def prepare(self, request: GenerationRequest) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        self.sent.append(request)
        for token in (1, 2):
            await asyncio.sleep(0)
            yield TokenStep(token)


def test_a_routed_request_is_timed_and_copied_to_shadows_that_have_room(tmp_path: Path) -> None:
    base = Artifact("base", tmp_path, Manifest(kind=ModelKind.MODEL), 0)
    shadow_model = Artifact("shadow", tmp_path, Manifest(kind=ModelKind.MODEL), 0)
    request = GenerationRequest("gen-1", base, None, [5, 6, 7], SamplingParams(max_tokens=100), 2048)
    live, roomy, full = _Engine(), _Engine(), _Engine()
    finished: list[tuple[str, bool]] = []

    def mirror(name: str, engine: _Engine, room: bool) -> Mirror:
        def done(x: str, d: str, seconds: float, ok: bool) -> None:
            finished.append((d, ok))

        return Mirror("exp", name, engine, lambda: shadow_model, 8, done, lambda: room)  # type: ignore[arg-type]

    stats = TrafficStats()
    metered = MeteredEngine(live, "a", stats, mirrors=[mirror("c", roomy, True), mirror("d", full, False)])  # type: ignore[arg-type]

    async def run() -> list[int]:
        steps = [step.token_id async for step in metered.generate(request)]
        for _ in range(100):  # the copies run in the background
            await asyncio.sleep(0.01)
            if finished:
                break
        return steps

    assert asyncio.run(run()) == [1, 2]
    assert stats.totals("a") == (1, 0) and finished == [("c", True)]
    [copy] = roomy.sent
    # The copy runs the shadow's own model on the same prompt, within its context, under another id.
    assert copy.base is shadow_model and copy.prompt_ids == [5, 6, 7] and copy.params.max_tokens == 5
    assert copy.request_id != request.request_id and full.sent == []
