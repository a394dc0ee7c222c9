"""What the console's endpoint pages show: an endpoint (a route), its deployments and traffic split, its
rollout's progress, its A/B and shadow experiments, and its events, shaped for the templates.

The router reads the services and passes their rows here with what it measured (ready replicas, shares,
mirrored copies); nothing here reads a service. States keep the console's words (``STARTED``), the
wire's enums lose their prefix (``ROLLOUT_STATE_PAUSED`` -> ``PAUSED``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelport.endpoints.experiment_rules import Comparison
from modelport.endpoints.rollout_states import is_terminal
from modelport.endpoints.states import EndpointState
from modelport.storage.db.tables import Endpoint, EndpointEvent, Experiment, Rollout, Route

SHADOW_MODE = "TRAFFIC_MODE_SHADOW"
CONTROL = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"
WIRE_PREFIXES = (
    "ROLLOUT_STRATEGY_TYPE_",
    "ROLLOUT_STATE_",
    "ROLLOUT_STEP_STATE_",
    "ROLLOUT_FAILURE_CATEGORY_",
    "METRIC_VERDICT_",
    "SHADOW_EXPERIMENT_STATE_",
    "LEVEL_",
)


@dataclass(frozen=True)
class Measured:
    """What the router found about a route's deployments, beyond their rows."""

    shares: Mapping[str, float]  # deployment id -> effective share of live requests (0..1)
    ready: Mapping[str, int]  # deployment id -> replicas answering now
    models: Mapping[str, str]  # model id -> name
    revisions: Mapping[str, int]  # revision id -> its number


def word(value: str | None) -> str:
    """``ROLLOUT_STATE_SYSTEM_PAUSED`` -> ``SYSTEM_PAUSED``: a wire enum without its type's prefix."""
    text = value or "-"
    for prefix in WIRE_PREFIXES:
        if text.startswith(prefix):
            return text.removeprefix(prefix)
    return text


def percent(share: float) -> str:
    return f"{100 * share:.3g}%"


def desired(d: Endpoint) -> int:
    """Replicas the deployment should run now (none while stopped), as the v2 wire's ``desiredReplicas``."""
    return 0 if d.state == EndpointState.STOPPED else d.replicas


# --- the list of endpoints -------------------------------------------------------------------------
def route_row(route: Route, deployments: Sequence[Endpoint], m: Measured) -> dict[str, Any]:
    only = deployments[0] if len(deployments) == 1 else None
    models = sorted({m.models.get(d.model_id, d.model_id) for d in deployments})
    return {
        "name": route.name,
        "deployments": len(deployments),
        "split": split_summary(deployments, m.shares),
        "models": models,  # the template links one, and counts several
        "states": state_counts(deployments),
        "replicas": f"{sum(m.ready.get(d.id, 0) for d in deployments)}/{sum(desired(d) for d in deployments)}",
        "only": _only(only) if only is not None else None,
        "started": any(d.state == EndpointState.STARTED for d in deployments),
        "created": route.created_at,
    }


def _only(d: Endpoint) -> dict[str, Any]:
    """An endpoint of one deployment (a v1 endpoint): the list acts on that deployment directly."""
    return {"name": d.name, "display_name": d.display_name, "state": d.state, "error": d.error}


def split_summary(deployments: Sequence[Endpoint], shares: Mapping[str, float]) -> str:
    """``blue 75%, green 25%``; a route of one deployment says nothing more than its name."""
    live = [(d.label or d.name, shares.get(d.id, 0.0)) for d in deployments if shares.get(d.id, 0.0) > 0]
    if not live:
        return "no live traffic" if deployments else "no deployments"
    return ", ".join(f"{label} {percent(share)}" for label, share in live)


def state_counts(deployments: Sequence[Endpoint]) -> list[tuple[str, int]]:
    """Each state with how many deployments are in it: one badge per state."""
    return sorted(Counter(d.state for d in deployments).items())


# --- one endpoint ----------------------------------------------------------------------------------
def deployment_rows(route: Route, deployments: Sequence[Endpoint], m: Measured) -> list[dict[str, Any]]:
    weights = {t["deployment_id"]: float(t["weight"]) for t in route.traffic}
    return [_deployment_row(d, weights, m) for d in deployments]


def _deployment_row(d: Endpoint, weights: Mapping[str, float], m: Measured) -> dict[str, Any]:
    number = m.revisions.get(d.revision_id or "")
    model = m.models.get(d.model_id, d.model_id)
    shadow = d.traffic_mode == SHADOW_MODE
    share = 0.0 if shadow else m.shares.get(d.id, 0.0)
    return {
        "label": d.label or d.name,
        "name": d.name,  # the full name: what the start/stop/delete forms post to
        "model": model,
        "revision": number if number is not None else d.revision_id,
        "hardware": d.hardware,
        "state": d.state,
        "error": d.error,
        "replicas": f"{m.ready.get(d.id, 0)}/{desired(d)}",
        "autoscaling": f"{d.min_replicas}-{d.max_replicas}",
        "shadow": shadow,
        "weight": None if shadow else weights.get(d.id),
        "share_percent": round(100 * share, 1),
        "share_text": percent(share),
    }


def labels_of(deployments: Sequence[Endpoint]) -> dict[str, str]:
    return {d.id: d.label or d.name for d in deployments}


def rollout_view(rollout: Rollout | None, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The rollout's progress: step i of n, the target's share of the pair's traffic, the gates' verdicts."""
    if rollout is None:
        return None
    steps = sorted(rollout.steps, key=lambda s: int(s.get("stepIndex", 0)))
    return {
        "id": rollout.id,
        "strategy": word(rollout.strategy).replace("_", "-").lower(),
        "source": labels.get(rollout.source_id or "", rollout.source_id or "-"),
        "target": labels.get(rollout.target_id, rollout.target_id),
        "state": word(rollout.state),
        "active": not is_terminal(rollout.state),
        "step": min(rollout.current_step + 1, len(steps)) if steps else 0,  # 1-based for people
        "steps_total": len(steps),
        "traffic": int(rollout.traffic_percent),
        "steps": [_step(s) for s in steps],
        "gates": _last_verdicts(steps),
        "paused": (rollout.pause_info or {}).get("reason"),
        "conditions": [f"{word(c.get('category'))}: {c.get('message')}" for c in rollout.conditions],
        "created": rollout.created_at,
    }


def _step(step: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "number": int(step.get("stepIndex", 0)) + 1,
        "traffic": step.get("targetTrafficPercent"),
        "state": word(step.get("state")),
        "gates": [_verdict(v) for v in step.get("metrics") or []],
    }


def _verdict(v: Mapping[str, Any]) -> dict[str, str]:
    return {"name": str(v.get("name")), "verdict": word(v.get("verdict"))}


def _last_verdicts(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    judged = [s for s in steps if s.get("metrics")]
    return [_verdict(v) for v in judged[-1]["metrics"]] if judged else []


def ab_rows(experiments: Sequence[Experiment], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "name": x.name,
            "description": x.description,
            "members": [
                {
                    "label": labels.get(m["deployment_id"], m["deployment_id"]),
                    "percent": int(m["percent"]),
                    "control": m.get("role") == CONTROL,
                }
                for m in x.members
            ],
        }
        for x in experiments
    ]


def shadow_rows(
    experiments: Sequence[Experiment],
    labels: Mapping[str, str],
    mirrored: Callable[[str, str], int],
    compared: Callable[[str], Comparison],
) -> list[dict[str, Any]]:
    """One row per target. ``mirrored(experiment, deployment)``: copies sent; ``compared(deployment)``: the
    target's latency and errors beside the live deployments'."""
    rows = []
    for x in experiments:
        targets: list[dict[str, Any] | None] = [*x.targets] or [None]  # an experiment without targets: one row
        for t in targets:
            row: dict[str, Any] = {"name": x.name, "state": word(x.state), "sampling": sampling_text(x.source)}
            if t is not None:
                deployment = t["target_deployment_id"]
                row |= {
                    "target": labels.get(deployment, deployment),
                    "mirrored": mirrored(x.id, deployment),
                    "comparison": comparison_text(compared(deployment)),
                }
            rows.append(row)
    return rows


def sampling_text(source: Mapping[str, Any]) -> str:
    """``uniform rate 0.2``: which of the wire's samplings, with its settings."""
    sampling = (source.get("endpoint") or {}).get("sampling") or {}
    parts = []
    for kind, settings in sampling.items():
        values = " ".join(f"{k} {v}" for k, v in settings.items()) if isinstance(settings, Mapping) else ""
        parts.append(f"{kind} {values}".strip())
    return "; ".join(parts) or "-"


def comparison_text(c: Comparison) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.3g} ms"

    return (
        f"p95 {ms(c.target.p95)} vs {ms(c.source.p95)} live; errors {c.target.errors}/{c.target.requests} "
        f"vs {c.source.errors}/{c.source.requests} (last {c.window_s:g} s)"
    )


def event_rows(events: Sequence[EndpointEvent], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Newest first."""
    return [
        {
            "at": e.created_at,
            "level": word(e.level).lower(),
            "type": e.type,
            "deployment": labels.get(e.deployment_id or "", e.deployment_id or ""),
            "message": e.message,
        }
        for e in reversed(events)
    ]
