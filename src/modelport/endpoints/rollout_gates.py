"""A canary step's metric gates: each reads the target's and the source's recent requests and gives a verdict.

A gate measures both deployments over its window (the router's ``TrafficStats`` for latency and errors,
the supervisor's replicas for requests in flight). A ``regressionCheck`` breaches when the target is worse
than the source by more than ``maxRegressionPercent``; a ``thresholdCheck`` when the target alone leaves
the bound its operator states (``LT 500``: below 500 passes). With too few requests to judge
(``MIN_SAMPLES``), or no replicas to ask, a gate is UNAVAILABLE: on a quiet endpoint it neither passes
nor stops the rollout.

A verdict goes on the wire as Together's CLI renders it: the rule (name, stat, check, bound) with the
values measured, e.g. ``router_latency p95: source=120, target=150, max regression 10%  Breached``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelport.endpoints.rollout_spec import HIGHER_IS_WORSE, PERCENTILE, Gate
from modelport.endpoints.traffic import TrafficStats
from modelport.serving.observe import percentile_of

PASS, BREACHED, UNAVAILABLE = "METRIC_VERDICT_PASS", "METRIC_VERDICT_BREACHED", "METRIC_VERDICT_UNAVAILABLE"
MIN_SAMPLES: Final = 5  # requests in the window below which a deployment's latency or error rate means little

_KEEPS: Final[Mapping[str, Callable[[float, float], bool]]] = {  # the bound a target must keep to pass
    "THRESHOLD_OPERATOR_GT": operator.gt,
    "THRESHOLD_OPERATOR_GTE": operator.ge,
    "THRESHOLD_OPERATOR_LT": operator.lt,
    "THRESHOLD_OPERATOR_LTE": operator.le,
}
_SYMBOLS: Final = {"THRESHOLD_OPERATOR_GT": ">", "THRESHOLD_OPERATOR_GTE": ">=", "THRESHOLD_OPERATOR_LT": "<"}
_AGGREGATES: Final[Mapping[str, Callable[[list[float]], float]]] = {
    "METRIC_STAT_TYPE_AVG": lambda xs: sum(xs) / len(xs),
    "METRIC_STAT_TYPE_MIN": min,
    "METRIC_STAT_TYPE_MAX": max,
}


@dataclass(frozen=True)
class Verdict:
    gate: Gate
    verdict: str
    target: float | None
    source: float | None

    @property
    def breached(self) -> bool:
        return self.verdict == BREACHED

    def wire(self) -> dict[str, Any]:
        g = self.gate
        body: dict[str, Any] = {"name": g.name, "stat": g.stat, "verdict": self.verdict}
        if g.stat == PERCENTILE and g.percentile is not None:
            body["percentile"] = g.percentile
        if g.operator is not None:
            body.update(check="METRIC_CHECK_TYPE_THRESHOLD", operator=g.operator, threshold=g.value)
        else:
            body.update(check="METRIC_CHECK_TYPE_REGRESSION", direction=g.direction)
            body["maxRegressionPercent"] = g.max_regression_percent
            if self.source is not None:
                body["sourceValue"] = self.source
        if self.target is not None:
            body["targetValue"] = self.target
        return body

    def describe(self) -> str:
        g = self.gate
        if g.operator is not None:
            bound = f"must stay {_SYMBOLS.get(g.operator, '<=')} {g.value:g}"
            return f"{g.name}: target {_shown(self.target)} ({bound})"
        limit = f"at most {g.max_regression_percent:g}% worse"
        return f"{g.name}: target {_shown(self.target)}, source {_shown(self.source)} ({limit})"


def evaluate(
    gate: Gate, target_id: str, source_id: str | None, stats: TrafficStats, inflight: Mapping[str, int]
) -> Verdict:
    target = measure(gate, target_id, stats, inflight)
    source = measure(gate, source_id, stats, inflight) if source_id and gate.operator is None else None
    return Verdict(gate, judge(gate, target, source), target, source)


def measure(gate: Gate, deployment_id: str, stats: TrafficStats, inflight: Mapping[str, int]) -> float | None:
    """The gate's metric for one deployment, or None when there is too little to go on."""
    if gate.name == "inflight_requests":
        return float(inflight[deployment_id]) if deployment_id in inflight else None
    samples = stats.window(deployment_id, gate.window_s)
    if len(samples) < MIN_SAMPLES:
        return None
    if gate.name == "router_error_rate":
        return sum(1 for s in samples if not s.ok) / len(samples)
    latencies = [s.seconds * 1000 for s in samples if s.ok]  # milliseconds; failed requests have no latency
    if not latencies:
        return None
    if gate.stat == PERCENTILE:
        return percentile_of(latencies, gate.percentile or 95)
    return _AGGREGATES[gate.stat](latencies)


def judge(gate: Gate, target: float | None, source: float | None) -> str:
    if target is None:
        return UNAVAILABLE
    if gate.operator is not None:
        return PASS if _KEEPS[gate.operator](target, gate.value) else BREACHED
    if source is None:
        return UNAVAILABLE
    margin = gate.max_regression_percent / 100
    if gate.direction == HIGHER_IS_WORSE:
        return BREACHED if target > source * (1 + margin) else PASS
    return BREACHED if target < source * (1 - margin) else PASS


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
