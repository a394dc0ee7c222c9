"""Together's dedicated-endpoint routes: ``/v1/hardware`` and ``/v1/endpoints``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from modelport.api.deps import PrincipalDep, get_catalog, get_endpoints, get_supervisor
from modelport.endpoints.service import Availability, EndpointSpec
from modelport.endpoints.states import EndpointState
from modelport.storage.db.tables import Endpoint

router = APIRouter()


class AutoscalingBody(BaseModel):
    min_replicas: int = 1
    max_replicas: int = 1


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="allow")  # availability_zone and future fields are accepted

    model: str
    hardware: str = ""
    autoscaling: AutoscalingBody = Field(default_factory=AutoscalingBody)
    # The 1.x SDK sends these two at the top level instead of inside ``autoscaling``.
    min_replicas: int | None = None
    max_replicas: int | None = None
    display_name: str | None = None
    disable_speculative_decoding: bool | None = None
    disable_prompt_cache: bool | None = None
    state: EndpointState = EndpointState.STARTED
    inactive_timeout: int | None = Field(default=None, ge=0)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    state: EndpointState | None = None
    display_name: str | None = None
    autoscaling: AutoscalingBody | None = None
    inactive_timeout: int | None = Field(default=None, ge=0)


def _iso(value: datetime) -> str:
    return value.isoformat()


def endpoint_json(e: Endpoint, model_name: str, owner: str, ready: int = 0) -> dict[str, Any]:
    return {
        "id": e.id,
        "object": "endpoint",
        "name": e.name,
        "display_name": e.display_name,
        "model": model_name,
        "hardware": e.hardware,
        "type": "dedicated",
        "owner": owner,
        "state": e.state,
        "autoscaling": {"min_replicas": e.min_replicas, "max_replicas": e.max_replicas},
        "replicas": {"running": ready},  # modelport addition: replicas ready to answer now
        "created_at": _iso(e.created_at),
        "inactive_timeout": e.inactive_timeout,
        "disable_speculative_decoding": e.disable_speculative_decoding,
        "disable_prompt_cache": e.disable_prompt_cache,
        "error": e.error,
    }


def _render(request: Request, who: Any, e: Endpoint) -> dict[str, Any]:
    model = get_catalog(request).get_model(who, e.model_id)
    return endpoint_json(e, model.name, who.account_name, get_supervisor(request).ready_replicas(e.id))


def hardware_json(a: Availability, updated: datetime) -> dict[str, Any]:
    c = a.config
    item: dict[str, Any] = {
        "id": c.id,
        "object": "hardware",
        "pricing": {"cents_per_minute": c.cents_per_minute},
        "specs": {
            "gpu_count": c.gpu_count,
            "gpu_link": c.gpu_link,
            "gpu_memory": c.gpu_memory_gb,
            "gpu_type": c.gpu_type,
        },
        "updated_at": _iso(updated),
    }
    if a.status is not None:
        item["availability"] = {"status": a.status}
    return item


@router.get("/hardware")
def list_hardware(request: Request, who: PrincipalDep, model: str | None = None) -> dict[str, Any]:
    service = get_endpoints(request)
    rows = service.hardware(who, model)
    return {"object": "list", "data": [hardware_json(a, service.inventory.detected_at) for a in rows]}


@router.post("/endpoints")
def create_endpoint(body: EndpointCreate, request: Request, who: PrincipalDep) -> dict[str, Any]:
    spec = EndpointSpec(
        model=body.model,
        hardware=body.hardware,
        min_replicas=body.min_replicas if body.min_replicas is not None else body.autoscaling.min_replicas,
        max_replicas=body.max_replicas if body.max_replicas is not None else body.autoscaling.max_replicas,
        display_name=body.display_name,
        disable_speculative_decoding=bool(body.disable_speculative_decoding),
        disable_prompt_cache=bool(body.disable_prompt_cache),
        state=body.state,
        inactive_timeout=body.inactive_timeout,
    )
    return _render(request, who, get_endpoints(request).create(who, spec))


@router.get("/endpoints")
def list_endpoints(request: Request, who: PrincipalDep, type: str | None = None) -> dict[str, Any]:
    rows = [] if type == "serverless" else get_endpoints(request).list(who)
    return {"object": "list", "data": [_render(request, who, e) for e in rows]}


@router.get("/endpoints/{endpoint_id:path}")
def get_endpoint(endpoint_id: str, request: Request, who: PrincipalDep) -> dict[str, Any]:
    return _render(request, who, get_endpoints(request).get(who, endpoint_id))


@router.patch("/endpoints/{endpoint_id:path}")
def update_endpoint(endpoint_id: str, body: EndpointPatch, request: Request, who: PrincipalDep) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    return _render(request, who, get_endpoints(request).update(who, endpoint_id, changes))


@router.delete("/endpoints/{endpoint_id:path}", status_code=204)
def delete_endpoint(endpoint_id: str, request: Request, who: PrincipalDep) -> Response:
    get_endpoints(request).delete(who, endpoint_id)
    return Response(status_code=204)
