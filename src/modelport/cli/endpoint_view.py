"""How ``modelport endpoints show`` and its siblings lay out a v2 endpoint: rows and fields from the wire's
JSON (WIRE-v2 §3), with its enum prefixes dropped (``DEPLOYMENT_STATE_READY`` -> ``READY``) and
deployments named, not numbered. Pure functions over dicts, so they are tested without a server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelport.cli.output import when

Row = tuple[Any, ...]
Json = Mapping[str, Any]
CONFIG_PREFIX = "cr_"  # a v2 config id is ours with this prefix (``cr_1x_cpu_2gb``)
BAR_WIDTH = 20
WIRE_PREFIXES = (
    "DEPLOYMENT_STATE_",
    "ROLLOUT_STATE_",
    "ROLLOUT_STRATEGY_TYPE_",
    "ROLLOUT_STEP_STATE_",
    "ROLLOUT_FAILURE_CATEGORY_",
    "METRIC_VERDICT_",
    "SHADOW_EXPERIMENT_STATE_",
    "AB_EXPERIMENT_MEMBER_ROLE_",
    "TRAFFIC_MODE_",
    "LEVEL_",
)


def word(value: Any) -> str:
    """A wire enum without its type's prefix: ``ROLLOUT_STATE_SYSTEM_PAUSED`` -> ``SYSTEM_PAUSED``."""
    text = str(value or "-")
    for prefix in WIRE_PREFIXES:
        if text.startswith(prefix):
            return text.removeprefix(prefix)
    return text


def label(deployment: Json) -> str:
    """A deployment's name within its endpoint: the wire's name is ``account/endpoint/deployment``."""
    return str(deployment.get("name") or deployment["id"]).rpartition("/")[2]


def names_of(endpoint: Json) -> dict[str, str]:
    """``dep_…`` -> the deployment's name within its endpoint."""
    return {str(d["id"]): label(d) for d in endpoint.get("deployments") or []}


def weights_of(endpoint: Json) -> dict[str, float]:
    return {str(t["deploymentId"]): float(t.get("weight") or 0.0) for t in endpoint.get("trafficSplit") or []}


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.4g}%"


# --- endpoints and deployments -------------------------------------------------------------------
def endpoint_fields(endpoint: Json) -> list[tuple[str, Any]]:
    return [
        ("id", endpoint.get("id")),
        ("name", endpoint.get("name")),
        ("deployments", len(endpoint.get("deployments") or [])),
        ("traffic split", split_summary(endpoint)),
        ("active rollout", endpoint.get("activeRolloutId")),
        ("created", when(endpoint.get("createdAt"))),
    ]


def split_summary(endpoint: Json) -> str:
    """``blue 75%, green 25%``: each live deployment's effective share (what ``shares`` computed)."""
    parts = [
        f"{label(d)} {percent(float(d.get('estimatedEffectiveTrafficShare') or 0.0))}"
        for d in endpoint.get("deployments") or []
        if float(d.get("estimatedEffectiveTrafficShare") or 0.0) > 0
    ]
    return ", ".join(parts) or "no live traffic"


DEPLOYMENT_COLUMNS = ("NAME", "MODEL@REVISION", "HARDWARE", "STATE", "READY/DESIRED", "TRAFFIC", "EFFECTIVE")


def deployment_rows(
    endpoint: Json, deployments: Sequence[Json], models: Mapping[str, str], revisions: Mapping[str, int]
) -> list[Row]:
    """One row per deployment. ``models``: ``ml_…`` -> name; ``revisions``: revision id -> its number."""
    weights, shares = weights_of(endpoint), _shares(endpoint)
    return [_deployment_row(d, weights, shares, models, revisions) for d in deployments]


def _shares(endpoint: Json) -> dict[str, float]:
    return {
        str(d["id"]): float(d.get("estimatedEffectiveTrafficShare") or 0.0) for d in endpoint.get("deployments") or []
    }


def _deployment_row(
    d: Json, weights: Mapping[str, float], shares: Mapping[str, float], models: Mapping[str, str], revisions: Any
) -> Row:
    status = d.get("status") or {}
    model = models.get(str(d.get("modelId")), str(d.get("modelId")))
    revision = d.get("modelRevisionId")
    pinned = f"{model}@{revisions.get(revision, revision)}" if revision else model
    return (
        label(d),
        pinned,
        str(d.get("configId") or d.get("hardware") or "-").removeprefix(CONFIG_PREFIX),
        word(status.get("state")),
        f"{status.get('readyReplicas') or 0}/{d.get('desiredReplicas') or 0}",
        *_traffic(d, weights, shares),
    )


def _traffic(d: Json, weights: Mapping[str, float], shares: Mapping[str, float]) -> tuple[str, str]:
    """The deployment's weight in the split and its effective share; a shadow deployment has neither."""
    if d.get("trafficMode") == "TRAFFIC_MODE_SHADOW":
        return "shadow", "-"
    weight = weights.get(str(d["id"]))
    return ("-" if weight is None else f"{weight:g}"), percent(shares.get(str(d["id"])))


SPLIT_COLUMNS = ("NAME", "TRAFFIC", "EFFECTIVE")


def split_rows(endpoint: Json) -> list[Row]:
    """From the endpoint alone: its deployment summaries carry the traffic mode and the share."""
    weights, shares = weights_of(endpoint), _shares(endpoint)
    return [(label(d), *_traffic(d, weights, shares)) for d in endpoint.get("deployments") or []]


# --- rollouts ------------------------------------------------------------------------------------
def rollout_fields(rollout: Json, names: Mapping[str, str]) -> list[tuple[str, Any]]:
    """A rollout's progress: which step of how many, the target's traffic, its state, the last verdicts."""
    status = rollout.get("status") or {}
    source = names.get(str(rollout.get("sourceDeploymentId")), rollout.get("sourceDeploymentId") or "-")
    target = names.get(str(rollout.get("targetDeploymentId")), str(rollout.get("targetDeploymentId")))
    traffic = int(rollout.get("currentTrafficPercent") or 0)
    fields: list[tuple[str, Any]] = [
        ("rollout", f"{rollout.get('id')} ({word(rollout.get('strategy')).lower().replace('_', '-')})"),
        ("from -> to", f"{source} -> {target}"),
        ("step", step_text(rollout)),
        ("target traffic", f"{bar(traffic)} {traffic}%"),
        ("state", word(rollout.get("state"))),
        ("gates", gate_text(last_verdicts(rollout))),
    ]
    if pause := rollout.get("pauseInfo"):
        fields.append(("paused", pause.get("reason") or pause))
    for condition in status.get("conditions") or []:
        fields.append(("condition", f"{word(condition.get('category'))}: {condition.get('message')}"))
    return fields


def step_text(rollout: Json) -> str:
    """``2/4``: the step the rollout is at (1-based) of its total."""
    total = (rollout.get("status") or {}).get("totalSteps")
    current = current_step(rollout)
    return f"{current}/{total}" if total else str(current)


def current_step(rollout: Json) -> int:
    """1-based. The wire's ``currentStep`` counts from 0, like ``stepIndex``."""
    return int(rollout.get("currentStep") or 0) + 1


def bar(percent_done: int) -> str:
    filled = round(BAR_WIDTH * max(0, min(percent_done, 100)) / 100)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def last_verdicts(rollout: Json) -> list[Json]:
    """The gate verdicts of the latest step that has any."""
    steps = sorted((rollout.get("status") or {}).get("steps") or [], key=lambda s: int(s.get("stepIndex") or 0))
    judged = [s for s in steps if s.get("metrics")]
    return list(judged[-1]["metrics"]) if judged else []


def gate_text(verdicts: Sequence[Json]) -> str:
    return ", ".join(f"{m.get('name')} {word(m.get('verdict'))}" for m in verdicts) or "-"


# --- experiments and events ----------------------------------------------------------------------
AB_COLUMNS = ("A/B EXPERIMENT", "MEMBERS")
SHADOW_COLUMNS = ("SHADOW EXPERIMENT", "STATE", "SAMPLING", "TARGET", "MIRRORED", "COMPARISON")
EVENT_COLUMNS = ("TIME", "LEVEL", "TYPE", "DEPLOYMENT", "MESSAGE")


def ab_rows(experiments: Sequence[Json], names: Mapping[str, str]) -> list[Row]:
    return [(x.get("name"), members_text(x, names)) for x in experiments]


def members_text(experiment: Json, names: Mapping[str, str]) -> str:
    """``blue 90% (control), green 10%``."""
    parts = []
    for m in experiment.get("members") or []:
        role = " (control)" if word(m.get("role")) == "CONTROL" else ""
        parts.append(f"{names.get(str(m.get('deploymentId')), m.get('deploymentId'))} {m.get('percent')}%{role}")
    return ", ".join(parts) or "-"


def shadow_rows(experiments: Sequence[Json], names: Mapping[str, str]) -> list[Row]:
    """One row per target (an experiment without targets gets one row too)."""
    rows: list[Row] = []
    for x in experiments:
        head = (x.get("name"), word(x.get("state")), sampling_text(x))
        for t in x.get("targets") or [{}]:
            target = names.get(str(t.get("targetDeploymentId")), t.get("targetDeploymentId"))
            rows.append((*head, target, t.get("mirroredRequests"), comparison_text(t.get("comparison"))))
    return rows


def sampling_text(experiment: Json) -> str:
    """``uniform rate=0.2``: which of the wire's four samplings, with its settings."""
    sampling = ((experiment.get("source") or {}).get("endpoint") or {}).get("sampling") or {}
    return "; ".join(f"{kind} {_pairs(settings)}".strip() for kind, settings in sampling.items()) or "-"


def comparison_text(comparison: Any) -> str:
    """``p95 12 ms vs 10 ms live, errors 0/3 vs 1/40 (300s)``: the target beside the live deployments it
    shadows (modelport's own field on a shadow target)."""
    if not isinstance(comparison, Mapping) or not comparison:
        return "-"
    target, source = comparison.get("target") or {}, comparison.get("source") or {}
    return (
        f"p95 {_ms(target.get('p95Ms'))} vs {_ms(source.get('p95Ms'))} live, errors "
        f"{target.get('errors', 0)}/{target.get('requests', 0)} vs {source.get('errors', 0)}/"
        f"{source.get('requests', 0)} ({comparison.get('window', '-')})"
    )


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g} ms"


def _pairs(values: Any) -> str:
    if not isinstance(values, Mapping):
        return str(values)
    return " ".join(f"{k}={v}" for k, v in values.items())


def event_rows(events: Sequence[Json], names: Mapping[str, str]) -> list[Row]:
    return [
        (
            when(e.get("createdAt")),
            word(e.get("level")),
            e.get("type"),
            names.get(str(e.get("deploymentId")), e.get("deploymentId")),
            e.get("message"),
        )
        for e in events
    ]
