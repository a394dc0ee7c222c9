"""Together 3.x's endpoints (``/v2/projects/{project}/endpoints…``; ``shared/WIRE-v2.md`` §3-4, §7).

An endpoint here is a route (``endpoints/routes.py``): a stable name over deployments, each an
``endpoints`` row run by the supervisor like a v1 endpoint. Rollouts live in ``v2_rollouts.py``;
A/B and shadow experiments and adapters in ``v2_experiments.py``. PATCH carries ``etag`` in its body
and DELETE in ``?etag=``; a stale one answers 409 with ``x-should-retry: false``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from modelport.accounts.service import Principal
from modelport.api.deps import (
    CatalogDep,
    PrincipalDep,
    RoutesDep,
    get_endpoints,
    get_events,
    get_routes,
    get_supervisor,
)
from modelport.api.together.convert import iso
from modelport.api.together.v2 import Camel, ProjectDep, page
from modelport.api.together.v2_supported import CONFIG_PREFIX, instance_name
from modelport.endpoints import autoscale
from modelport.endpoints.events import Events
from modelport.endpoints.routes import LIVE
from modelport.endpoints.service import EndpointService, EndpointSpec
from modelport.endpoints.states import EndpointState
from modelport.endpoints.supervisor import Supervisor
from modelport.endpoints.traffic import shares
from modelport.errors import InvalidRequest, NotFound
from modelport.ids import deployment_id_of_wire, wire_deployment_id, wire_model_id
from modelport.manifest import ModelKind
from modelport.storage.db.tables import Endpoint, EndpointEvent, Route

router = APIRouter()
E = "/projects/{project_id}/endpoints/{endpoint_id}"
EventsDep = Annotated[Events, Depends(get_events)]
SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]
_FILTER_NAME = re.compile(r'name\s*=\s*"([^"]*)"')

# Our states, as the v2 wire names a deployment's.
STATES = {
    EndpointState.PENDING: "DEPLOYMENT_STATE_PROVISIONING",
    EndpointState.STARTING: "DEPLOYMENT_STATE_PROVISIONING",
    EndpointState.STARTED: "DEPLOYMENT_STATE_READY",
    EndpointState.STOPPING: "DEPLOYMENT_STATE_STOPPING",
    EndpointState.STOPPED: "DEPLOYMENT_STATE_STOPPED",
    EndpointState.ERROR: "DEPLOYMENT_STATE_FAILED",
}


def deployment_state(d: Endpoint, ready: int) -> str:
    """READY when every replica it should run answers; SCALING while the count moves; DEGRADED while a
    crashed replica restarts after having served."""
    state = STATES[EndpointState(d.state)]
    if d.state == EndpointState.STARTING and d.restarts:
        return "DEPLOYMENT_STATE_DEGRADED"
    if d.state == EndpointState.STARTING and ready > 0:  # some replicas answer, more are starting
        return "DEPLOYMENT_STATE_SCALING"
    if d.state == EndpointState.STARTED and ready != d.replicas:
        return "DEPLOYMENT_STATE_SCALING"
    return state


# --- shapes ----------------------------------------------------------------------------------------
def _autoscaling(d: Endpoint) -> dict[str, Any]:
    return {**(d.autoscaling or {}), "minReplicas": d.min_replicas, "maxReplicas": d.max_replicas}


def _hardware(endpoints: EndpointService, d: Endpoint) -> str:
    config = next((c for c in endpoints.configs() if c.id == d.hardware), None)
    return instance_name(config) if config is not None else d.hardware


def deployment_json(d: Endpoint, route: Route, endpoints: EndpointService, supervisor: Supervisor) -> dict[str, Any]:
    ready = supervisor.ready_replicas(d.id)
    model_path = f"projects/{d.account_id}/models/{wire_model_id(d.model_id)}"
    body: dict[str, Any] = {
        "id": wire_deployment_id(d.id),
        "name": d.name,  # "<account>/<endpoint>/<deployment>": callable as a model, pinning it
        "endpointId": route.id,
        "projectId": d.account_id,
        "autoscaling": _autoscaling(d),
        "config": f"projects/{d.account_id}/configs/{CONFIG_PREFIX}{d.hardware}",
        "configId": CONFIG_PREFIX + d.hardware,
        "model": model_path + (f"/revisions/{d.revision_id}" if d.revision_id else ""),
        "modelId": wire_model_id(d.model_id),
        "modelRevisionId": d.revision_id,
        "hardware": _hardware(endpoints, d),
        "etag": d.etag,
        "createdAt": iso(d.created_at),
        "updatedAt": iso(d.updated_at),
        "trafficMode": d.traffic_mode,
        "status": {"state": deployment_state(d, ready), "message": d.error or "", "readyReplicas": ready},
        "desiredReplicas": d.replicas if d.state != EndpointState.STOPPED else 0,
        "inactiveTimeout": d.inactive_timeout or 0,
        "placement": {"profile": "local"},
    }
    if d.max_concurrent:
        body["maxConcurrentRequestsPerReplica"] = str(d.max_concurrent)
    return body


def _summary(d: Endpoint, full: dict[str, Any], share: float) -> dict[str, Any]:
    keys = ("id", "name", "autoscaling", "createdAt", "model", "modelId", "trafficMode", "desiredReplicas", "hardware")
    return {k: full[k] for k in keys} | {
        "state": full["status"]["state"],
        "readyReplicas": full["status"]["readyReplicas"],
        "estimatedEffectiveTrafficShare": round(share, 4),
    }


def endpoint_json(route: Route, request: Request) -> dict[str, Any]:
    routes, endpoints, supervisor = get_routes(request), get_endpoints(request), get_supervisor(request)
    deployments = routes.deployments(route.id)
    live = {d.id for d in deployments if d.traffic_mode == LIVE}
    effective = shares(route.traffic, live, routes.experiments(route.id))
    summaries = [
        _summary(d, deployment_json(d, route, endpoints, supervisor), effective.get(d.id, 0.0)) for d in deployments
    ]
    body: dict[str, Any] = {
        "id": route.id,
        "name": route.name,
        "projectId": route.account_id,
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "etag": route.etag,
        "visibility": route.visibility,
        "createdAt": iso(route.created_at),
        "updatedAt": iso(route.updated_at),
        "trafficSplit": [
            {"deploymentId": wire_deployment_id(t["deployment_id"]), "weight": float(t["weight"])}
            for t in route.traffic
        ],
        "deployments": summaries,
    }
    active = routes.active_rollout(route.id)
    if active is not None:
        body["activeRolloutId"] = active
    return body


def event_json(e: EndpointEvent) -> dict[str, Any]:
    body = {
        "id": e.id,
        "createdAt": iso(e.created_at),
        "type": e.type,
        "endpointId": e.route_id,
        "level": e.level,
        "sourceKind": "SOURCE_KIND_DEPLOYMENT" if e.deployment_id else "SOURCE_KIND_ENDPOINT",
        "message": e.message,
    }
    if e.deployment_id:
        body["deploymentId"] = wire_deployment_id(e.deployment_id)
    return body


# --- bodies ----------------------------------------------------------------------------------------
class EndpointBody(Camel):
    name: str = ""
    visibility: str | None = None
    etag: str | None = None
    traffic_split: list[dict[str, Any]] | None = None


class DeploymentBody(Camel):
    name: str = ""
    autoscaling: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    model_id: str | None = None
    model_revision_id: str | None = None
    config: str | None = None
    config_id: str | None = None
    inactive_timeout: int | None = None
    max_concurrent_requests_per_replica: int | None = None
    placement: dict[str, Any] | None = None
    etag: str | None = None


def _mask(update_mask: str | None, body: Camel) -> set[str]:
    """The fields a PATCH changes: ``updateMask`` (comma-joined camelCase), else those the body sets."""
    if update_mask:
        return {part.strip() for part in update_mask.split(",") if part.strip()}
    return {type(body).model_fields[f].alias or f for f in body.model_fields_set}


def _replicas(autoscaling: dict[str, Any], default: int) -> tuple[int, int]:
    """minReplicas and maxReplicas (int32: numbers or strings), once the whole object is checked."""
    found = autoscale.problems(autoscaling)
    try:
        low = int(autoscaling.get("minReplicas", default) or 0)
        high = int(autoscaling.get("maxReplicas", max(low, default)) or 0)
    except (TypeError, ValueError):
        found.append("autoscaling.minReplicas and maxReplicas must be whole numbers")
        low = high = 0
    if found:
        raise InvalidRequest("; ".join(found), param="autoscaling")
    return low, high


def _model_ref(catalog: Any, who: Principal, body: DeploymentBody) -> str:
    """``model`` (a path, maybe ending ``/revisions/{rev}``) or ``modelId``, plus ``modelRevisionId``."""
    ref, revision = body.model_id, body.model_revision_id
    if body.model:
        parts = body.model.strip("/").split("/")
        if "revisions" in parts:
            revision = revision or parts[parts.index("revisions") + 1]
            parts = parts[: parts.index("revisions")]
        ref = parts[-1] if "models" in parts else body.model
    if not ref:
        raise InvalidRequest("model or modelId is required", param="model")
    model = catalog.get_model(who, ref)
    if model.kind == ModelKind.ADAPTER:
        raise InvalidRequest(
            f"{model.name} is an adapter: deploy its base model and attach the adapter to that deployment "
            "(tg endpoints deploy --attach-adapter); merged adapters are not served here",
            param="model",
        )
    return f"{model.id}@{revision}" if revision else model.id


def _hardware_of(body: DeploymentBody) -> str:
    config = body.config_id or (body.config or "").rstrip("/").rpartition("/")[2]
    if not config:
        raise InvalidRequest("config or configId is required (GET …/configs lists them)", param="config")
    return config.removeprefix(CONFIG_PREFIX)


# --- endpoints -------------------------------------------------------------------------------------
@router.post("/projects/{project_id}/endpoints")
def create_endpoint(body: EndpointBody, who: ProjectDep, routes: RoutesDep, request: Request) -> dict[str, Any]:
    return endpoint_json(routes.create(who, body.name, body.visibility), request)


@router.get("/projects/{project_id}/endpoints")
def list_endpoints(
    who: ProjectDep,
    routes: RoutesDep,
    request: Request,
    filter: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    match = _FILTER_NAME.search(filter or "")
    listed = routes.listed(who, match.group(1) if match else None)
    return page(listed, lambda r: endpoint_json(r, request), "id", limit, after)


@router.get("/organizations/{org_id}/endpoints")
def list_org_endpoints(
    org_id: str,
    who: PrincipalDep,
    routes: RoutesDep,
    request: Request,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    if org_id != who.account_id:
        raise NotFound(f"organization {org_id!r} not found", param="organizationId")
    return page(routes.listed(who), lambda r: endpoint_json(r, request), "id", limit, after)


@router.get(E)
def get_endpoint(endpoint_id: str, who: ProjectDep, routes: RoutesDep, request: Request) -> dict[str, Any]:
    return endpoint_json(routes.get(who, endpoint_id), request)


@router.patch(E)
def update_endpoint(
    endpoint_id: str,
    body: EndpointBody,
    who: ProjectDep,
    routes: RoutesDep,
    request: Request,
    update_mask: Annotated[str | None, Query(alias="updateMask")] = None,
) -> dict[str, Any]:
    mask = _mask(update_mask, body) - {"etag"}
    changes: dict[str, Any] = {}
    if "name" in mask:
        changes["name"] = body.name
    if "visibility" in mask:
        changes["visibility"] = body.visibility
    if "trafficSplit" in mask:
        changes["traffic"] = [
            {"deployment_id": t.get("deploymentId", ""), "weight": t.get("weight", 0)} for t in body.traffic_split or []
        ]
    return endpoint_json(routes.update(who, endpoint_id, body.etag, changes), request)


@router.delete(E)
def delete_endpoint(endpoint_id: str, who: ProjectDep, routes: RoutesDep, etag: str | None = None) -> dict[str, Any]:
    routes.delete(who, endpoint_id, etag)
    return {}


@router.get(E + "/events")
def list_events(
    endpoint_id: str,
    who: ProjectDep,
    routes: RoutesDep,
    events: EventsDep,
    deployment_ids: Annotated[str | None, Query(alias="deploymentIds")] = None,
    min_level: Annotated[str | None, Query(alias="minLevel")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    types: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    route = routes.get(who, endpoint_id)
    wanted = [deployment_id_of_wire(d) or d for d in (deployment_ids or "").split(",") if d]
    listed = events.list(
        route.id,
        deployment_ids=wanted,
        min_level=min_level,
        since=since,
        until=until,
        types=[t for t in (types or "").split(",") if t],
    )
    return page(listed, event_json, "id", limit, after)


@router.get("/projects/{project_id}/placement-profiles")
def list_placement_profiles(who: ProjectDep, limit: int | None = None, after: str | None = None) -> dict[str, Any]:
    return page([PLACEMENT], lambda p: p, "id", limit, after)


@router.get("/projects/{project_id}/placement-profiles/{profile_id}")
def get_placement_profile(profile_id: str, who: ProjectDep) -> dict[str, Any]:
    if profile_id != PLACEMENT["id"]:
        raise NotFound(f"placement profile {profile_id!r} not found", param="id")
    return PLACEMENT


PLACEMENT: dict[str, Any] = {"id": "local", "name": "This host", "preferredRegions": ["local"]}


# --- deployments -----------------------------------------------------------------------------------
@router.post(E + "/deployments")
def create_deployment(
    endpoint_id: str,
    body: DeploymentBody,
    who: ProjectDep,
    routes: RoutesDep,
    catalog: CatalogDep,
    request: Request,
    validate_only: Annotated[bool, Query(alias="validateOnly")] = False,
) -> dict[str, Any]:
    route = routes.get(who, endpoint_id)
    low, high = _replicas(body.autoscaling, 1)
    spec = EndpointSpec(
        model=_model_ref(catalog, who, body),
        hardware=_hardware_of(body),
        min_replicas=low,
        max_replicas=high,
        state=EndpointState.STARTED if high > 0 else EndpointState.STOPPED,
        inactive_timeout=body.inactive_timeout or None,
        label=body.name,
        max_concurrent=body.max_concurrent_requests_per_replica or None,
        autoscaling={k: v for k, v in body.autoscaling.items() if k not in ("minReplicas", "maxReplicas")},
    )
    deployment = routes.create_deployment(who, route, spec, validate_only)
    if deployment is None:  # validateOnly: what it would be, without an id
        return {"name": body.name, "endpointId": route.id, "validated": True}
    return deployment_json(deployment, route, get_endpoints(request), get_supervisor(request))


@router.get(E + "/deployments")
def list_deployments(
    endpoint_id: str,
    who: ProjectDep,
    routes: RoutesDep,
    request: Request,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    route = routes.get(who, endpoint_id)
    endpoints, supervisor = get_endpoints(request), get_supervisor(request)
    listed = routes.deployments(route.id)
    return page(listed, lambda d: deployment_json(d, route, endpoints, supervisor), "id", limit, after)


@router.get(E + "/deployments/{deployment_id}")
def get_deployment(
    endpoint_id: str, deployment_id: str, who: ProjectDep, routes: RoutesDep, request: Request
) -> dict[str, Any]:
    route = routes.get(who, endpoint_id)
    deployment = routes.deployment(who, route, deployment_id)
    return deployment_json(deployment, route, get_endpoints(request), get_supervisor(request))


@router.patch(E + "/deployments/{deployment_id}")
def update_deployment(
    endpoint_id: str,
    deployment_id: str,
    body: DeploymentBody,
    who: ProjectDep,
    routes: RoutesDep,
    request: Request,
    update_mask: Annotated[str | None, Query(alias="updateMask")] = None,
) -> dict[str, Any]:
    route = routes.get(who, endpoint_id)
    current = routes.deployment(who, route, deployment_id)
    mask = _mask(update_mask, body) - {"etag"}
    changes: dict[str, Any] = {}
    if "autoscaling" in mask:
        low, high = _replicas(body.autoscaling, current.min_replicas)
        if "maxReplicas" not in body.autoscaling:
            high = max(low, current.max_replicas)
        changes["autoscaling"] = {"min_replicas": low, "max_replicas": high}
        extra = {k: v for k, v in body.autoscaling.items() if k not in ("minReplicas", "maxReplicas")}
        changes["autoscaling_spec"] = (current.autoscaling or {}) | extra
    if "inactiveTimeout" in mask:
        changes["inactive_timeout"] = body.inactive_timeout or None
    if "maxConcurrentRequestsPerReplica" in mask:
        changes["max_concurrent"] = body.max_concurrent_requests_per_replica or None
    if "name" in mask and body.name:
        changes["label"] = body.name
    updated = routes.update_deployment(who, route, current.id, body.etag, changes)
    return deployment_json(updated, route, get_endpoints(request), get_supervisor(request))


@router.delete(E + "/deployments/{deployment_id}")
def delete_deployment(
    endpoint_id: str, deployment_id: str, who: ProjectDep, routes: RoutesDep, etag: str | None = None
) -> dict[str, Any]:
    route = routes.get(who, endpoint_id)
    routes.delete_deployment(who, route, deployment_id, etag)
    return {}
