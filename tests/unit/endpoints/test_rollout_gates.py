"""Rollout gates and the rollout lifecycle table: verdicts from measured requests, requests held to the table."""

from __future__ import annotations

from typing import Any

import pytest

from modelport.endpoints.rollout_gates import BREACHED, PASS, UNAVAILABLE, evaluate
from modelport.endpoints.rollout_spec import Pair, gates_of, plan
from modelport.endpoints.rollout_states import REQUESTS, TERMINAL, TRANSITIONS, RolloutState, on_request
from modelport.endpoints.traffic import TrafficStats
from modelport.errors import Conflict
from modelport.storage.db.tables import Rollout

LATENCY_GATE = {
    "name": "router_latency",
    "stat": "METRIC_STAT_TYPE_PERCENTILE",
    "percentile": 95,
    "window": "60s",
    "regressionCheck": {"direction": "REGRESSION_DIRECTION_HIGHER_IS_WORSE", "maxRegressionPercent": 10.0},
}


PAIR = Pair(source_replicas=1, target_max_replicas=1, target_percent=0)


def _gate(**check: Any) -> dict[str, Any]:
    return {"name": "router_error_rate", "window": "60s", **check}


@pytest.mark.parametrize(
    ("gate", "target_errors", "source_errors", "verdict"),
    [
        # A threshold is the bound the target keeps: an error rate of 0.3 is not below 0.2.
        (_gate(thresholdCheck={"operator": "THRESHOLD_OPERATOR_LT", "value": 0.2}), 3, 0, BREACHED),
        (_gate(thresholdCheck={"operator": "THRESHOLD_OPERATOR_LT", "value": 0.5}), 3, 0, PASS),
        (_gate(thresholdCheck={"operator": "THRESHOLD_OPERATOR_LTE", "value": 0.3}), 3, 0, PASS),
        (_gate(thresholdCheck={"operator": "THRESHOLD_OPERATOR_GT", "value": 0.5}), 3, 0, BREACHED),
        (_gate(regressionCheck={"maxRegressionPercent": 50}), 3, 2, PASS),  # 0.3 <= 0.2 * 1.5
        (_gate(regressionCheck={"maxRegressionPercent": 10}), 3, 2, BREACHED),
        (_gate(regressionCheck={"direction": "REGRESSION_DIRECTION_LOWER_IS_WORSE"}), 1, 5, BREACHED),
    ],
)
def test_gates_compare_the_target_with_the_source_or_a_threshold(
    gate: dict[str, Any], target_errors: int, source_errors: int, verdict: str
) -> None:
    stats = TrafficStats()
    for deployment, errors in (("target", target_errors), ("source", source_errors)):
        for i in range(10):
            stats.record(deployment, 0.1, ok=i >= errors)
    [parsed] = gates_of(plan({"metrics": [gate]}, PAIR).spec)
    assert evaluate(parsed, "target", "source", stats, {}).verdict == verdict


def test_a_gate_with_too_few_requests_or_no_replicas_is_unavailable() -> None:
    stats = TrafficStats()
    for _ in range(4):  # one short of the minimum
        stats.record("target", 9.0, ok=True)
    for _ in range(10):
        stats.record("source", 0.1, ok=True)
    spec = plan({"metrics": [LATENCY_GATE, {"name": "inflight_requests", "regressionCheck": {}}]}, PAIR).spec
    latency, inflight = gates_of(spec)
    assert evaluate(latency, "target", "source", stats, {}).verdict == UNAVAILABLE
    assert evaluate(inflight, "target", "source", stats, {"source": 2}).verdict == UNAVAILABLE
    assert evaluate(inflight, "target", "source", stats, {"target": 9, "source": 2}).verdict == BREACHED


def test_finished_rollouts_go_nowhere_and_each_request_comes_from_its_own_states() -> None:
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    for request, (sources, to) in REQUESTS.items():
        assert all(to in TRANSITIONS[s] for s in sources), request
    paused = Rollout(id="rol_x", state=RolloutState.PAUSED)
    assert on_request(paused, "resume") == RolloutState.RUNNING
    with pytest.raises(Conflict, match="cannot start"):
        on_request(paused, "start")  # PAUSED -> RUNNING is resume's move, not start's
    with pytest.raises(Conflict):
        on_request(Rollout(id="rol_y", state=RolloutState.COMPLETED), "cancel")
