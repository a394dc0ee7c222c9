"""Together 3.x's A/B and shadow experiments on an endpoint (``shared/WIRE-v2.md`` §3, §4, §7).

``E/abExperiments`` and ``E/shadowExperiments`` (with ``…/targets``), where ``E`` is
``/v2/projects/{project}/endpoints/{endpoint}``; adapters on a deployment are in ``v2_adapters.py``.
The rules live in ``endpoints/experiments.py``; this module maps camelCase JSON to them.
Every PATCH takes ``etag`` in its body and every DELETE ``?etag=``; a stale one is 409, and DELETE
answers ``{}`` (an empty JSON body crashes the SDK). A shadow target's JSON carries two fields of
modelport's own: ``mirroredRequests`` (copies sent to it since this server started) and ``comparison``
(its latency and errors beside those of the live deployments it shadows, over the last minutes).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from pydantic.alias_generators import to_camel

from modelport.accounts.service import Principal
from modelport.api.deps import get_experiments, get_routes, get_routing
from modelport.api.together.convert import iso
from modelport.api.together.v2 import Camel, ProjectDep, page
from modelport.endpoints.experiment_rules import AB, SHADOW_KIND, Comparison, Member, TargetSpec, compare
from modelport.endpoints.experiments import Experiments
from modelport.endpoints.traffic import Summary
from modelport.errors import InvalidRequest
from modelport.ids import wire_deployment_id
from modelport.storage.db.tables import Experiment, Route

router = APIRouter()

E = "/projects/{project_id}/endpoints/{endpoint_id}"
ExperimentsDep = Annotated[Experiments, Depends(get_experiments)]
EtagQuery = Annotated[str | None, Query()]
MaskQuery = Annotated[str, Query(alias="updateMask")]


def _route(request: Request, who: Principal, endpoint_id: str) -> Route:
    return get_routes(request).get(who, endpoint_id)


def _mask(update_mask: str, body: BaseModel, allowed: set[str]) -> set[str]:
    """The fields to change: those ``updateMask`` names (camelCase), else those the body sets."""
    named = {f.strip() for f in update_mask.split(",") if f.strip()}
    fields = named or {to_camel(f) for f in body.model_fields_set} - {"etag"}
    unknown = fields - allowed
    if unknown:
        raise InvalidRequest(
            f"updateMask names fields that cannot change: {', '.join(sorted(unknown))} (allowed: "
            f"{', '.join(sorted(allowed))})",
            param="updateMask",
        )
    return fields


# --- shapes ----------------------------------------------------------------------------------------
def _experiment_json(x: Experiment, route: Route) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": x.id,
        "name": x.name,
        "endpointId": route.id,
        "projectId": route.account_id,
        "createdBy": x.created_by,
        "etag": x.etag,
        "createdAt": iso(x.created_at),
        "updatedAt": iso(x.updated_at),
    }
    if x.description:
        body["description"] = x.description
    return body


def ab_json(x: Experiment, route: Route) -> dict[str, Any]:
    members = [
        {"deploymentId": wire_deployment_id(m["deployment_id"]), "percent": int(m["percent"]), "role": m["role"]}
        for m in x.members
    ]
    return _experiment_json(x, route) | {"members": members}


def _summary_json(summary: Summary) -> dict[str, Any]:
    body: dict[str, Any] = {"requests": str(summary.requests), "errors": str(summary.errors)}
    if summary.p50 is not None:
        body["p50Ms"] = round(summary.p50 * 1000, 3)
    if summary.p95 is not None:
        body["p95Ms"] = round(summary.p95 * 1000, 3)
    return body


def comparison_json(c: Comparison) -> dict[str, Any]:
    return {"window": f"{c.window_s:g}s", "target": _summary_json(c.target), "source": _summary_json(c.source)}


class Shadows:
    """Shadow experiments as JSON, with what this server measured of each target."""

    def __init__(self, request: Request, route: Route) -> None:
        self.route, self.routing = route, get_routing(request)
        self.sources = get_experiments(request).live_sources(route)

    def target(self, x: Experiment, t: dict[str, Any]) -> dict[str, Any]:
        deployment_id = t["target_deployment_id"]
        body: dict[str, Any] = {
            "id": t["id"],
            "name": t["name"],
            "experimentId": x.id,
            "targetDeploymentId": wire_deployment_id(deployment_id),
            "etag": t["etag"],
            "mirroredRequests": str(self.routing.mirrored(x.id, deployment_id)),
            "comparison": comparison_json(compare(self.routing.stats, deployment_id, self.sources)),
        }
        if t.get("description"):
            body["description"] = t["description"]
        return body

    def experiment(self, x: Experiment, targets: bool = True) -> dict[str, Any]:
        body = _experiment_json(x, self.route) | {"state": x.state, "source": x.source}
        if targets:
            body["targets"] = [self.target(x, t) for t in x.targets]
        return body


# --- A/B experiments -------------------------------------------------------------------------------
class MemberBody(Camel):
    deployment_id: str
    percent: int
    role: str = ""


class CreateAb(Camel):
    name: str
    members: list[MemberBody] = Field(default_factory=list, max_length=1000)
    description: str = ""


class UpdateAb(Camel):
    members: list[MemberBody] | None = Field(default=None, max_length=1000)
    description: str | None = None
    etag: str | None = None


def _members(body: list[MemberBody] | None) -> list[Member]:
    return [Member(m.deployment_id, m.percent, m.role) for m in body or []]


@router.get(E + "/abExperiments")
def list_ab(
    endpoint_id: str,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    return page(experiments.list(route, AB), lambda x: ab_json(x, route), "id", limit, after)


@router.post(E + "/abExperiments")
def create_ab(
    endpoint_id: str, body: CreateAb, request: Request, who: ProjectDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    x = experiments.create_ab(who, route, body.name, _members(body.members), body.description)
    return ab_json(x, route)


@router.get(E + "/abExperiments/{experiment_id}")
def get_ab(
    endpoint_id: str, experiment_id: str, request: Request, who: ProjectDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    return ab_json(experiments.get(route, AB, experiment_id), route)


@router.patch(E + "/abExperiments/{experiment_id}")
def update_ab(
    endpoint_id: str,
    experiment_id: str,
    body: UpdateAb,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    update_mask: MaskQuery = "",
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    fields = _mask(update_mask, body, {"members", "description"})
    members = _members(body.members) if "members" in fields else None
    description = (body.description or "") if "description" in fields else None
    x = experiments.update_ab(who, route, experiment_id, body.etag, members=members, description=description)
    return ab_json(x, route)


@router.delete(E + "/abExperiments/{experiment_id}")
def delete_ab(
    endpoint_id: str,
    experiment_id: str,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    etag: EtagQuery = None,
) -> dict[str, Any]:
    experiments.delete(_route(request, who, endpoint_id), AB, experiment_id, etag)
    return {}


# --- shadow experiments ----------------------------------------------------------------------------
class TargetBody(Camel):
    name: str
    target_deployment_id: str
    description: str = ""


class CreateShadow(Camel):
    name: str
    source: dict[str, Any] = Field(default_factory=dict)
    targets: list[TargetBody] = Field(default_factory=list, max_length=100)
    description: str = ""


class UpdateShadow(Camel):
    source: dict[str, Any] | None = None
    description: str | None = None
    etag: str | None = None


class UpdateTarget(Camel):
    name: str | None = None
    description: str | None = None
    etag: str | None = None


def _target_spec(t: TargetBody) -> TargetSpec:
    return TargetSpec(t.name, t.target_deployment_id, t.description)


@router.get(E + "/shadowExperiments")
def list_shadow(
    endpoint_id: str,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    include_targets: Annotated[bool, Query(alias="includeTargets")] = False,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    shadows = Shadows(request, route)
    listed = experiments.list(route, SHADOW_KIND)
    return page(listed, lambda x: shadows.experiment(x, include_targets), "id", limit, after)


@router.post(E + "/shadowExperiments")
def create_shadow(
    endpoint_id: str, body: CreateShadow, request: Request, who: ProjectDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    targets = [_target_spec(t) for t in body.targets]
    x = experiments.create_shadow(who, route, body.name, body.source, targets, body.description)
    return Shadows(request, route).experiment(x)


@router.get(E + "/shadowExperiments/{experiment_id}")
def get_shadow(
    endpoint_id: str, experiment_id: str, request: Request, who: ProjectDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    return Shadows(request, route).experiment(experiments.get(route, SHADOW_KIND, experiment_id))


@router.patch(E + "/shadowExperiments/{experiment_id}")
def update_shadow(
    endpoint_id: str,
    experiment_id: str,
    body: UpdateShadow,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    update_mask: MaskQuery = "",
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    fields = _mask(update_mask, body, {"source", "description"})
    source = (body.source or {}) if "source" in fields else None
    description = (body.description or "") if "description" in fields else None
    x = experiments.update_shadow(route, experiment_id, body.etag, source=source, description=description)
    return Shadows(request, route).experiment(x)


@router.delete(E + "/shadowExperiments/{experiment_id}")
def delete_shadow(
    endpoint_id: str,
    experiment_id: str,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    etag: EtagQuery = None,
) -> dict[str, Any]:
    experiments.delete(_route(request, who, endpoint_id), SHADOW_KIND, experiment_id, etag)
    return {}


T = E + "/shadowExperiments/{experiment_id}/targets"


@router.get(T)
def list_targets(
    endpoint_id: str,
    experiment_id: str,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    x, shadows = experiments.get(route, SHADOW_KIND, experiment_id), Shadows(request, route)
    return page(x.targets, lambda t: shadows.target(x, t), "id", limit, after)


@router.post(T)
def add_target(
    endpoint_id: str,
    experiment_id: str,
    body: TargetBody,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    x, target = experiments.add_target(who, route, experiment_id, _target_spec(body))
    return Shadows(request, route).target(x, target)


@router.get(T + "/{target_id}")
def get_target(
    endpoint_id: str, experiment_id: str, target_id: str, request: Request, who: ProjectDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    x, target = experiments.target(route, experiment_id, target_id)
    return Shadows(request, route).target(x, target)


@router.patch(T + "/{target_id}")
def update_target(
    endpoint_id: str,
    experiment_id: str,
    target_id: str,
    body: UpdateTarget,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    update_mask: MaskQuery = "",
) -> dict[str, Any]:
    route = _route(request, who, endpoint_id)
    fields = _mask(update_mask, body, {"name", "description"})
    name = body.name if "name" in fields else None
    description = (body.description or "") if "description" in fields else None
    x, target = experiments.update_target(
        route, experiment_id, target_id, body.etag, name=name, description=description
    )
    return Shadows(request, route).target(x, target)


@router.delete(T + "/{target_id}")
def delete_target(
    endpoint_id: str,
    experiment_id: str,
    target_id: str,
    request: Request,
    who: ProjectDep,
    experiments: ExperimentsDep,
    etag: EtagQuery = None,
) -> dict[str, Any]:
    experiments.delete_target(_route(request, who, endpoint_id), experiment_id, target_id, etag)
    return {}
