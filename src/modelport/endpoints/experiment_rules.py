"""What makes an A/B or shadow experiment valid, as pure checks over values the service read
(``experiments.py`` holds the service that reads and writes the rows).

Each check collects every problem before it raises, so one 400 tells the whole story. The stored forms
are what the router reads for each request: members ``[{"deployment_id", "percent", "role"}]``
(``traffic.shares``), and ``source = {"endpoint": {"sampling": {<one kind>: {…}}}}`` with the wire's
camelCase keys (``traffic.sampled``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelport.endpoints.routes import LIVE
from modelport.endpoints.routing import COMPARE_WINDOW_S
from modelport.endpoints.traffic import CONTROL, Summary, TrafficStats
from modelport.errors import Conflict, InvalidRequest, NotFound
from modelport.serving.observe import percentile_of
from modelport.storage.db.tables import Endpoint

AB, SHADOW_KIND = "ab", "shadow"  # ``Experiment.kind``
VARIANT = "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"
SHADOW_INACTIVE = "SHADOW_EXPERIMENT_STATE_INACTIVE"
MIN_MEMBERS, MAX_MEMBERS = 2, 20
MAX_NAME = 200  # the column's size
# ``source.endpoint.sampling`` holds exactly one of these, with these fields (``window`` is optional:
# the CLI sends it only when asked).
SAMPLINGS = {
    "uniform": ("rate",),
    "keyBased": ("key", "rate"),
    "adaptiveUniform": ("targetQps", "window"),
    "adaptiveKeyBased": ("key", "targetQps", "window"),
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


@dataclass(frozen=True)
class Member:
    """An A/B member as asked: ``deployment`` is any reference ``Routes.deployment`` accepts."""

    deployment: str
    percent: int
    role: str


@dataclass(frozen=True)
class TargetSpec:
    """A shadow target as asked: ``deployment`` is any reference ``Routes.deployment`` accepts."""

    name: str
    deployment: str
    description: str = ""


@dataclass(frozen=True)
class Comparison:
    """A shadow target's latency and errors beside those of the live deployments it copies, lately."""

    target: Summary
    source: Summary
    window_s: float


def compare(
    stats: TrafficStats, target_id: str, source_ids: Iterable[str], window_s: float = COMPARE_WINDOW_S
) -> Comparison:
    """The target's summary beside that of all ``source_ids`` together (their samples pooled)."""
    pooled = [sample for d in source_ids for sample in stats.window(d, window_s)]
    ok = [sample.seconds for sample in pooled if sample.ok]
    source = Summary(len(pooled), len(pooled) - len(ok), percentile_of(ok, 50), percentile_of(ok, 95))
    return Comparison(stats.summary(target_id, window_s), source, window_s)


def checked_name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidRequest(f"{what} name is required (1-{MAX_NAME} characters)", param="name")
    return name


# --- A/B members ----------------------------------------------------------------------------------
def checked_members(
    members: Sequence[Member],
    resolved: Mapping[str, Endpoint | str],
    weights: Mapping[str, float],
    elsewhere: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The members as stored, or every problem with them at once (400).

    ``resolved``: each reference's deployment, or why there is none; ``weights``: the traffic split;
    ``elsewhere``: deployments in the route's other A/B experiments, with that experiment's name (a
    deployment in two would have its share divided twice, in an order nothing defines)."""
    problems = _shape_problems(members)
    seen: set[str] = set()
    for m in members:
        d = resolved.get(m.deployment)
        if not isinstance(d, Endpoint):
            problems.append(str(d))
            continue
        if d.id in seen:
            problems.append(f"deployment {d.label} is named twice")
        seen.add(d.id)
        if d.traffic_mode != LIVE:
            problems.append(f"deployment {d.label} is a shadow deployment: only live deployments can take part")
        if d.id in elsewhere:
            problems.append(f"deployment {d.label} is already in A/B experiment {elsewhere[d.id]}")
        if m.role == CONTROL and weights.get(d.id, 0.0) <= 0:
            problems.append(
                f"the control {d.label} has no weight in the endpoint's traffic split, so it has no traffic to "
                "divide: give it weight first (PATCH the endpoint's trafficSplit)"
            )
    if problems:
        raise InvalidRequest("invalid members: " + "; ".join(problems), param="members")
    return [{"deployment_id": _id(resolved[m.deployment]), "percent": m.percent, "role": m.role} for m in members]


def _id(found: Endpoint | str) -> str:
    assert isinstance(found, Endpoint)  # ``checked_members`` refused the others
    return found.id


def _shape_problems(members: Sequence[Member]) -> list[str]:
    problems = []
    if not MIN_MEMBERS <= len(members) <= MAX_MEMBERS:
        problems.append(f"an A/B experiment has {MIN_MEMBERS}-{MAX_MEMBERS} members, not {len(members)}")
    bad = [m for m in members if isinstance(m.percent, bool) or not isinstance(m.percent, int)]
    bad += [m for m in members if m not in bad and not 0 <= m.percent <= 100]
    problems += [f"member {m.deployment}: percent must be a whole number from 0 to 100" for m in bad]
    if not bad and sum(m.percent for m in members) != 100:
        problems.append(f"percents must sum to 100, not {sum(m.percent for m in members)}")
    problems += [
        f"member {m.deployment}: role must be {CONTROL} or {VARIANT}"
        for m in members
        if m.role not in (CONTROL, VARIANT)
    ]
    controls = [m for m in members if m.role == CONTROL]
    if len(controls) != 1:
        problems.append(f"exactly one member must be the control ({CONTROL}), not {len(controls)}")
    elif not bad and controls[0].percent < 1:
        problems.append("the control keeps at least 1 percent")
    return problems


# --- shadow targets -------------------------------------------------------------------------------
def check_target(
    found: Endpoint | str, weight: float, in_ab: str | None, experiment: str, targets: Sequence[Mapping[str, Any]]
) -> Endpoint:
    """The deployment a new target of ``experiment`` names, if it may be one: it takes no live traffic
    (``weight`` 0 in the split, in no A/B experiment ``in_ab``), and no other target names it."""
    if not isinstance(found, Endpoint):
        raise NotFound(found, param="targetDeploymentId")
    if weight > 0:
        raise InvalidRequest(
            f"deployment {found.label} takes live traffic (weight {weight:g} in the traffic split): a shadow target "
            "must have weight 0, so set its weight to 0 first or deploy another one to shadow",
            param="targetDeploymentId",
        )
    if in_ab is not None:
        raise InvalidRequest(
            f"deployment {found.label} takes live traffic as a member of A/B experiment {in_ab}: a shadow "
            "target cannot",
            param="targetDeploymentId",
        )
    if any(t["target_deployment_id"] == found.id for t in targets):
        raise Conflict(f"deployment {found.label} is already a target of {experiment}", param="targetDeploymentId")
    return found


def checked_target_name(name: str, experiment: str, targets: Sequence[Mapping[str, Any]]) -> str:
    name = checked_name(name, "target")
    if any(t["name"] == name for t in targets):
        raise Conflict(f"target {name} already exists in shadow experiment {experiment}", param="name")
    return name


# --- shadow sampling ------------------------------------------------------------------------------
def checked_source(source: Mapping[str, Any] | None) -> dict[str, Any]:
    """``source`` with its ``endpoint.sampling`` validated and normalized, as ``traffic.sampled`` reads it."""
    endpoint = source.get("endpoint") if isinstance(source, Mapping) else None
    sampling = endpoint.get("sampling") if isinstance(endpoint, Mapping) else None
    kinds = [k for k in SAMPLINGS if isinstance(sampling, Mapping) and sampling.get(k) is not None]
    if not isinstance(sampling, Mapping) or len(kinds) != 1 or not isinstance(sampling[kinds[0]], Mapping):
        raise InvalidRequest(
            "source.endpoint.sampling must hold exactly one of uniform{rate}, keyBased{key,rate}, "
            "adaptiveUniform{targetQps,window} or adaptiveKeyBased{key,targetQps,window}",
            param="source",
        )
    kind = kinds[0]
    checked, problems = _checked_sampling(kind, sampling[kind])
    if problems:
        raise InvalidRequest(f"invalid source.endpoint.sampling.{kind}: " + "; ".join(problems), param="source")
    return {"endpoint": {"sampling": {kind: checked}}}


def _checked_sampling(kind: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    fields, out, problems = SAMPLINGS[kind], dict[str, Any](), list[str]()
    if "key" in fields:
        out["key"] = str(body.get("key") or "").strip()
        if not out["key"]:
            problems.append("key is required (the request header whose value picks what is copied)")
    if "rate" in fields:
        rate = _number(body.get("rate"))
        if rate is None or not 0 <= rate <= 1:
            problems.append("rate must be a number from 0 to 1")
        out["rate"] = rate
    if "targetQps" in fields:
        qps = _number(body.get("targetQps"))
        if qps is None or qps <= 0:
            problems.append("targetQps must be a number above 0")
        out["targetQps"] = qps
    if "window" in fields and body.get("window") is not None:
        seconds = _seconds(body["window"])
        if seconds is None or seconds <= 0:
            problems.append(f'window must be a duration such as "60s", not {body["window"]!r}')
        out["window"] = f"{seconds:g}s" if seconds else body["window"]
    return out, problems


def _number(value: Any) -> float | None:
    """A finite JSON number, or one sent as a string (proto3 JSON may send int64 and doubles either way)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _seconds(value: Any) -> float | None:
    """A proto3 JSON duration (``"60s"``, ``"1.5s"``), or a plain number of seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        return float(match.group(1)) if match else None
    return _number(value)
