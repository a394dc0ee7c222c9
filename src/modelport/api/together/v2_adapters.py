"""Together 3.x's LoRA adapters on a deployment: ``E/deployments/{d}/adapters[/{a}]`` (``shared/WIRE-v2.md``).

``E`` is ``/v2/projects/{project}/endpoints/{endpoint}``; the deployment is named by its ``dep_`` id or
its name. The rules (same base revision, slots, eviction) live in ``endpoints/adapters.py``. PATCH takes
``{adapterRevisionId, etag}`` (no mask); DELETE takes ``?etag=`` and answers ``{}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from modelport.accounts.service import Principal
from modelport.api.deps import get_adapters, get_routes
from modelport.api.together.convert import iso
from modelport.api.together.v2 import Camel, ProjectDep, page
from modelport.endpoints.adapters import DeploymentAdapters
from modelport.ids import wire_model_id
from modelport.storage.db.tables import DeploymentAdapter, Endpoint

router = APIRouter()

AdaptersDep = Annotated[DeploymentAdapters, Depends(get_adapters)]
EtagQuery = Annotated[str | None, Query()]


def adapter_json(a: DeploymentAdapter, adapters: DeploymentAdapters, deployment: Endpoint) -> dict[str, Any]:
    load = adapters.load_state(deployment)
    cluster = {
        "clusterId": "local",
        "state": load.state,
        "readyPodCount": load.ready_pods,
        "totalPodCount": load.total_pods,
    }
    return {
        "id": a.id,
        "adapterModelId": wire_model_id(a.adapter_model_id),
        "desiredRevisionId": a.revision_id,
        "etag": a.etag,
        "createdAt": iso(a.created_at),
        "updatedAt": iso(a.updated_at),
        "perCluster": [cluster],
    }


# --- adapters on a deployment ----------------------------------------------------------------------
class AttachAdapter(Camel):
    adapter_model_id: str
    adapter_revision_id: str | None = None
    force: bool = False


class UpdateAdapter(Camel):
    adapter_revision_id: str
    etag: str | None = None


A = "/projects/{project_id}/endpoints/{endpoint_id}/deployments/{deployment_id}/adapters"


def _deployment(request: Request, who: Principal, endpoint_id: str, deployment_id: str) -> Endpoint:
    routes = get_routes(request)
    return routes.deployment(who, routes.get(who, endpoint_id), deployment_id)


@router.get(A)
def list_adapters(
    endpoint_id: str,
    deployment_id: str,
    request: Request,
    who: ProjectDep,
    adapters: AdaptersDep,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    deployment = _deployment(request, who, endpoint_id, deployment_id)
    return page(adapters.list(deployment), lambda a: adapter_json(a, adapters, deployment), "id", limit, after)


@router.post(A)
def attach_adapter(
    endpoint_id: str,
    deployment_id: str,
    body: AttachAdapter,
    request: Request,
    who: ProjectDep,
    adapters: AdaptersDep,
) -> dict[str, Any]:
    deployment = _deployment(request, who, endpoint_id, deployment_id)
    a = adapters.attach(who, deployment, body.adapter_model_id, body.adapter_revision_id, body.force)
    return adapter_json(a, adapters, deployment)


@router.get(A + "/{adapter_id}")
def get_adapter(
    endpoint_id: str, deployment_id: str, adapter_id: str, request: Request, who: ProjectDep, adapters: AdaptersDep
) -> dict[str, Any]:
    deployment = _deployment(request, who, endpoint_id, deployment_id)
    return adapter_json(adapters.get(deployment, adapter_id), adapters, deployment)


@router.patch(A + "/{adapter_id}")
def update_adapter(
    endpoint_id: str,
    deployment_id: str,
    adapter_id: str,
    body: UpdateAdapter,
    request: Request,
    who: ProjectDep,
    adapters: AdaptersDep,
) -> dict[str, Any]:
    deployment = _deployment(request, who, endpoint_id, deployment_id)
    a = adapters.update(who, deployment, adapter_id, body.adapter_revision_id, body.etag)
    return adapter_json(a, adapters, deployment)


@router.delete(A + "/{adapter_id}")
def detach_adapter(
    endpoint_id: str,
    deployment_id: str,
    adapter_id: str,
    request: Request,
    who: ProjectDep,
    adapters: AdaptersDep,
    etag: EtagQuery = None,
) -> dict[str, Any]:
    adapters.detach(_deployment(request, who, endpoint_id, deployment_id), adapter_id, etag)
    return {}
