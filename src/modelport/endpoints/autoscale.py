"""How many replicas a deployment should run, from its load, like Kubernetes' HPA with stabilization windows.

The load is the engine's own figure: requests in flight on the deployment's replicas (generating or
queued there). Each replica should carry at most its target (``maxConcurrentRequestsPerReplica``, or an
``active_sessions``/``inflight_requests`` scaling metric's target); a deployment wanting more replicas
than it runs for ``scaleUpWindow`` gets them, one wanting fewer for ``scaleDownWindow`` gives them
back, and one with ``minReplicas`` 0 that saw no request for ``scaleToZeroWindow`` stops them all (the
next request wakes it). Decisions are pure: the supervisor keeps the clock and applies them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_TARGET = 8  # requests in flight per replica when the deployment names no target
DEFAULT_UP_S, DEFAULT_DOWN_S, DEFAULT_ZERO_S = 30.0, 600.0, 900.0
LOAD_METRICS = ("active_sessions", "inflight_requests", "concurrency")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def seconds(value: Any, default: float) -> float:
    """A wire duration ("30s", "1.5m", 600) in seconds; ``default`` when absent or unreadable."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    return float(match.group(1)) * _UNIT[match.group(2)] if match else default


WINDOWS = ("scaleUpWindow", "scaleDownWindow", "scaleToZeroWindow")


def problems(spec: Any) -> list[str]:
    """What is wrong with a wire ``autoscaling`` object (beyond min/max), all at once; [] when fine."""
    if not isinstance(spec, dict):
        return ["autoscaling must be an object"]
    found = [f"autoscaling.{k} must be a duration like '30s'" for k in WINDOWS if _bad_duration(spec.get(k))]
    metrics = spec.get("scalingMetrics") or []
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        return [*found, "autoscaling.scalingMetrics must be a list of objects"]
    for i, metric in enumerate(metrics):
        if not isinstance(metric.get("name"), str) or not metric["name"]:
            found.append(f"autoscaling.scalingMetrics[{i}].name is required")
        target = metric.get("target")
        number = _number(target)
        if target is not None and (number is None or number <= 0):
            found.append(f"autoscaling.scalingMetrics[{i}].target must be a number above 0")
    return found


def _bad_duration(value: Any) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return True
    return seconds(value, -1.0) < 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Policy:
    minimum: int
    maximum: int
    target: float
    up_s: float
    down_s: float
    zero_s: float

    @classmethod
    def of(cls, low: int, high: int, max_concurrent: int | None, spec: dict[str, Any] | None) -> Policy:
        spec = spec if isinstance(spec, dict) else {}  # checked at the API (``problems``); never trusted here
        target = float(max_concurrent or 0)
        metrics = spec.get("scalingMetrics")
        for metric in metrics if isinstance(metrics, list) else []:
            if not isinstance(metric, dict) or metric.get("name") not in LOAD_METRICS:
                continue
            wanted = _number(metric.get("target"))
            if wanted is not None and wanted > 0:
                target = wanted
        return cls(
            low,
            high,
            target or DEFAULT_TARGET,
            seconds(spec.get("scaleUpWindow"), DEFAULT_UP_S),
            seconds(spec.get("scaleDownWindow"), DEFAULT_DOWN_S),
            seconds(spec.get("scaleToZeroWindow"), DEFAULT_ZERO_S),
        )

    def wanted(self, in_flight: int, idle_s: float) -> int:
        """Replicas for this load, within min and max; 0 only for an idle deployment allowed to sleep."""
        if self.minimum == 0 and in_flight == 0 and idle_s >= self.zero_s:
            return 0
        return max(self.minimum, 1, min(self.maximum, math.ceil(in_flight / self.target)))


@dataclass
class Pressure:
    """Since when a deployment has wanted more (or fewer) replicas than it runs."""

    direction: int = 0
    since: float = 0.0


def decide(policy: Policy, current: int, in_flight: int, idle_s: float, pressure: Pressure, now: float) -> int:
    """The replica count to run now: ``current`` unless the wish to change has lasted its window."""
    wanted = policy.wanted(in_flight, idle_s)
    direction = (wanted > current) - (wanted < current)
    if direction == 0:
        pressure.direction = 0
        return current
    if pressure.direction != direction:
        pressure.direction, pressure.since = direction, now
    if wanted == 0:
        return 0  # the idle window has already passed
    window = policy.up_s if direction > 0 else policy.down_s
    if now - pressure.since >= window:
        pressure.direction = 0
        return wanted
    return current
