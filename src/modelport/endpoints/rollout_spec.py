"""What a rollout request asks for, read and checked: its strategy, its step ladder, its gates, its final replicas.

The body is Together's (``shared/WIRE-v2.md`` §7): one of ``canary{steps[{traffic}], stepInterval}``,
``blueGreen{}`` or ``rolling{}``, ``metrics`` gates (canary only), ``finalSourceReplicas`` and
``finalTargetReplicas``. ``plan`` reads it, collecting every problem before raising once, and fills in
the defaults as Together documents them (its SDK's field docs):

- no strategy, or an empty ``canary``: the ladder 5, 25, 50, 100 %, less the steps at or below the
  target's current share of the pair (a pair left half-moved by a canceled rollout starts above it);
  explicit steps must increase and end at 100. ``stepInterval`` defaults to 3 minutes, and a step always
  runs at least as long as its gates' windows (``wait_of``), which default to the step interval.
- ``rolling``: one step per replica of the target, at least two; ``blueGreen``: one step, at once.
- ``finalSourceReplicas`` defaults to 0 (the source is stopped once the target has its traffic);
  ``finalTargetReplicas`` is a floor for the target, at least 1, defaulting to the source's replicas.

The normalized spec is what the ``Rollout`` row keeps (``spec``) and what the controller reads on every
tick (``gates_of``, ``wait_of``, ``finals_of``), so a restarted server needs nothing else.

Units, as Together's CLI shows them: ``router_latency`` in milliseconds, ``router_error_rate`` a fraction
(0.05 is 5 %), ``inflight_requests`` a count. A ``thresholdCheck`` states the bound the target must keep:
``{operator: THRESHOLD_OPERATOR_LT, value: 500}`` on latency breaches once the target's reaches 500 ms.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from modelport.endpoints.autoscale import seconds
from modelport.errors import InvalidRequest

log = logging.getLogger(__name__)


class Strategy(StrEnum):
    CANARY = "ROLLOUT_STRATEGY_TYPE_CANARY"
    BLUE_GREEN = "ROLLOUT_STRATEGY_TYPE_BLUE_GREEN"
    ROLLING = "ROLLOUT_STRATEGY_TYPE_ROLLING"


STRATEGY_KEYS: Final = {"canary": Strategy.CANARY, "blueGreen": Strategy.BLUE_GREEN, "rolling": Strategy.ROLLING}
DEFAULT_LADDER: Final = (5, 25, 50, 100)
DEFAULT_INTERVAL: Final = "180s"
METRICS: Final = ("router_latency", "router_error_rate", "inflight_requests")
PERCENTILE: Final = "METRIC_STAT_TYPE_PERCENTILE"
STATS: Final = (PERCENTILE, "METRIC_STAT_TYPE_AVG", "METRIC_STAT_TYPE_MIN", "METRIC_STAT_TYPE_MAX")
HIGHER_IS_WORSE, LOWER_IS_WORSE = "REGRESSION_DIRECTION_HIGHER_IS_WORSE", "REGRESSION_DIRECTION_LOWER_IS_WORSE"
OPERATORS: Final = tuple(f"THRESHOLD_OPERATOR_{op}" for op in ("GT", "GTE", "LT", "LTE"))
FINALS: Final = ("finalSourceReplicas", "finalTargetReplicas")
KNOWN_KEYS: Final = {"sourceDeploymentId", "targetDeploymentId", "metrics", "etag", *FINALS, *STRATEGY_KEYS}


@dataclass(frozen=True)
class Pair:
    """What the defaults are computed from: the two deployments as they are now."""

    source_replicas: int
    target_max_replicas: int
    target_percent: int  # the target's share of the pair's weight, 0-100


@dataclass(frozen=True)
class Gate:
    """One metric gate: the target's value against the source's (regression) or against a bound."""

    name: str
    stat: str
    percentile: float | None
    window_s: float
    direction: str | None  # set for a regressionCheck
    max_regression_percent: float
    operator: str | None  # set for a thresholdCheck
    value: float


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    ladder: tuple[int, ...]  # the target's percent of the pair's traffic at each step, ending at 100
    defaulted: bool  # the ladder is the default one (the caller gave no steps)
    spec: dict[str, Any]  # normalized, defaults filled in: what the row keeps and the wire echoes


def plan(body: Mapping[str, Any], pair: Pair) -> Plan:
    """Read a create (or preview) body; raise ``InvalidRequest`` listing every problem found."""
    problems: list[str] = []
    unknown = set(body) - KNOWN_KEYS
    if unknown:
        log.info("rollout request: ignoring unknown fields %s", sorted(unknown))
    chosen = [k for k in STRATEGY_KEYS if body.get(k) is not None]
    if len(chosen) > 1:
        problems.append(f"give one strategy, not {' and '.join(chosen)}")
    key = chosen[0] if chosen else "canary"
    options = _object(body.get(key), key, problems)
    ladder, defaulted = _ladder(key, options, pair, problems)
    interval = _duration(options.get("stepInterval"), DEFAULT_INTERVAL, f"{key}.stepInterval", problems)
    rules = _list(body.get("metrics"), "metrics", problems)
    metrics = [_gate_spec(m, i, interval, problems) for i, m in enumerate(rules)]
    if metrics and key != "canary":
        problems.append("metrics gates apply to canary rollouts only")
    source = _replicas(body.get("finalSourceReplicas"), "finalSourceReplicas", 0, problems)
    target = _replicas(body.get("finalTargetReplicas"), "finalTargetReplicas", 1, problems)
    if problems:
        raise InvalidRequest("invalid rollout: " + "; ".join(problems))
    strategy: dict[str, Any] = {}
    if key == "canary":
        strategy = {"steps": [{"traffic": p} for p in ladder], "stepInterval": interval}
    elif key == "rolling":
        strategy = {"stepInterval": interval}
    spec: dict[str, Any] = {
        key: strategy,
        "metrics": metrics,
        "finalSourceReplicas": 0 if source is None else source,
        "finalTargetReplicas": max(1, pair.source_replicas) if target is None else target,
    }
    return Plan(STRATEGY_KEYS[key], ladder, defaulted, spec)


def wait_of(spec: Mapping[str, Any]) -> float:
    """Seconds a step runs before its gates are read: the step interval, stretched to cover every gate's
    window (a window reaching back before the step would measure the step before). Blue-green: none."""
    for key in ("canary", "rolling"):
        if key in spec:
            interval = seconds(spec[key].get("stepInterval"), seconds(DEFAULT_INTERVAL, 180.0))
            return max([interval, *(g.window_s for g in gates_of(spec))])
    return 0.0


def gates_of(spec: Mapping[str, Any]) -> list[Gate]:
    return [_gate(m) for m in spec.get("metrics") or []]


def finals_of(spec: Mapping[str, Any]) -> tuple[int | None, int | None]:
    source, target = spec.get("finalSourceReplicas"), spec.get("finalTargetReplicas")
    return (None if source is None else int(source)), (None if target is None else int(target))


# --- reading the body ---------------------------------------------------------------------------------
def _ladder(key: str, options: Mapping[str, Any], pair: Pair, problems: list[str]) -> tuple[tuple[int, ...], bool]:
    if key == "blueGreen":
        return (100,), False
    if key == "rolling":
        # One step per replica of the target (at least two), so traffic follows capacity as it comes up.
        n = max(2, pair.target_max_replicas)
        return tuple(round(100 * i / n) for i in range(1, n + 1)), False
    steps = _list(options.get("steps"), "canary.steps", problems)
    if not steps:
        return tuple(p for p in DEFAULT_LADDER if p > pair.target_percent) or (100,), True
    ladder: list[int] = []
    for i, step in enumerate(steps):
        traffic = _number(step.get("traffic") if isinstance(step, Mapping) else None)
        if traffic is None or not 0 < traffic <= 100 or traffic != int(traffic):
            problems.append(f"canary.steps[{i}].traffic must be a whole percent above 0 and at most 100")
        elif ladder and traffic <= ladder[-1]:
            problems.append(f"canary.steps[{i}].traffic must be above the step before it ({ladder[-1]})")
        else:
            ladder.append(int(traffic))
    if ladder and ladder[-1] != 100:
        problems.append("canary.steps must end at 100: the target has all the pair's traffic when it completes")
    return tuple(ladder), False


def _gate_spec(raw: Any, i: int, interval: str, problems: list[str]) -> dict[str, Any]:
    where = f"metrics[{i}]"
    m = _object(raw, where, problems)
    if m.get("name") not in METRICS:
        problems.append(f"{where}.name must be one of {', '.join(METRICS)}")
    stat = m.get("stat") or PERCENTILE
    if stat not in STATS:
        problems.append(f"{where}.stat must be one of {', '.join(STATS)}")
    spec: dict[str, Any] = {
        "name": m.get("name"),
        "stat": stat,
        "window": _duration(m.get("window"), interval, f"{where}.window", problems),
    }
    if stat == PERCENTILE:
        percentile = _number(m.get("percentile") or 95)
        if percentile is None or not 0 < percentile <= 100:
            problems.append(f"{where}.percentile must be above 0 and at most 100")
        spec["percentile"] = percentile
    checks = [k for k in ("regressionCheck", "thresholdCheck") if m.get(k) is not None]
    if len(checks) != 1:
        problems.append(f"{where} needs exactly one of regressionCheck or thresholdCheck")
    elif checks[0] == "regressionCheck":
        spec["regressionCheck"] = _regression(_object(m["regressionCheck"], where, problems), where, problems)
    else:
        spec["thresholdCheck"] = _threshold(_object(m["thresholdCheck"], where, problems), where, problems)
    return spec


def _regression(check: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    direction = check.get("direction") or HIGHER_IS_WORSE
    if direction not in (HIGHER_IS_WORSE, LOWER_IS_WORSE):
        problems.append(f"{where}.regressionCheck.direction must be {HIGHER_IS_WORSE} or {LOWER_IS_WORSE}")
    most = _number(check.get("maxRegressionPercent", 10.0))
    if most is None or most < 0:
        problems.append(f"{where}.regressionCheck.maxRegressionPercent must be a number >= 0")
    return {"direction": direction, "maxRegressionPercent": most}


def _threshold(check: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    operator, value = check.get("operator"), _number(check.get("value"))
    if operator not in OPERATORS:
        problems.append(f"{where}.thresholdCheck.operator must be one of {', '.join(OPERATORS)}")
    if value is None:
        problems.append(f"{where}.thresholdCheck.value must be a number")
    return {"operator": operator, "value": value}


def _gate(m: Mapping[str, Any]) -> Gate:
    regression, threshold = m.get("regressionCheck") or {}, m.get("thresholdCheck") or {}
    percentile = m.get("percentile")
    return Gate(
        name=str(m["name"]),
        stat=str(m.get("stat") or PERCENTILE),
        percentile=None if percentile is None else float(percentile),
        window_s=seconds(m.get("window"), 0.0),
        direction=regression.get("direction") if regression else None,
        max_regression_percent=float(regression.get("maxRegressionPercent") or 0.0),
        operator=threshold.get("operator") if threshold else None,
        value=float(threshold.get("value") or 0.0),
    )


def _object(value: Any, where: str, problems: list[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where} must be an object")
        return {}
    return value


def _list(value: Any, where: str, problems: list[str]) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where} must be a list")
        return []
    return value


def _number(value: Any) -> float | None:
    """A JSON number, or one sent as a string (proto3 JSON sends int64 that way)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _duration(value: Any, default: str, where: str, problems: list[str]) -> str:
    """A proto duration ("600s"); ``default`` when absent."""
    if value is None or value == "":
        return default
    if seconds(value, -1.0) < 0:
        problems.append(f'{where} must be a duration such as "60s" or "5m"')
        return default
    return f"{seconds(value, 0.0):g}s"


def _replicas(value: Any, where: str, least: int, problems: list[str]) -> int | None:
    if value is None:
        return None
    number = _number(value)
    if number is None or number < least or number != int(number):
        problems.append(f"{where} must be a whole number >= {least}")
        return None
    return int(number)
