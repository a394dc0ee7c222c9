"""Together 3.x's rollouts (``/v2/projects/{project}/endpoints/{endpoint}/rollouts…``; ``shared/WIRE-v2.md``
§3 "Rollout", §4, §7).

What they do is ``endpoints/rollouts.py``'s; here are the wire's shapes. ``start`` comes with an empty
body (``Content-Length: 0``), so it reads none; the other moves take an optional JSON body whose
``etag``, when given, must be the rollout's current one. Deployment ids go out as ``dep_…`` and come in
as that, our id, or the deployment's name.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from modelport.api.deps import RoutesDep, get_rollouts
from modelport.api.together.convert import iso
from modelport.api.together.v2 import Camel, ProjectDep, page
from modelport.endpoints.rollout_states import RolloutState, is_terminal
from modelport.endpoints.rollouts import Preview, Rollouts
from modelport.ids import wire_deployment_id
from modelport.storage.db.tables import Rollout

router = APIRouter()
R = "/projects/{project_id}/endpoints/{endpoint_id}/rollouts"


RolloutsDep = Annotated[Rollouts, Depends(get_rollouts)]
JsonBody = Annotated[dict[str, Any] | None, Body()]


# --- shapes ----------------------------------------------------------------------------------------
def rollout_json(r: Rollout) -> dict[str, Any]:
    status: dict[str, Any] = {"totalSteps": len(r.steps), "steps": r.steps, "updatedAt": iso(r.updated_at)}
    if r.conditions:
        # ``condition``: why it stopped (the CLI renders this one); ``conditions``: every one recorded.
        status["condition"], status["conditions"] = r.conditions[-1], r.conditions
    body: dict[str, Any] = {
        "id": r.id,
        "endpointId": r.route_id,
        "targetDeploymentId": wire_deployment_id(r.target_id),
        "etag": r.etag,
        "createdAt": iso(r.created_at),
        "updatedAt": iso(r.updated_at),
        "state": r.state,
        "strategy": r.strategy,
        "currentTrafficPercent": r.traffic_percent,
        "status": status,
        "spec": r.spec,  # what was asked, with the defaults filled in
    }
    if r.source_id:
        body["sourceDeploymentId"] = wire_deployment_id(r.source_id)
    if r.state != RolloutState.PENDING:  # unset until it starts; step 0 is explicit after that
        body["currentStep"] = r.current_step
    if r.steps and r.steps[0].get("startedAt"):
        body["startedAt"] = r.steps[0]["startedAt"]
    if is_terminal(r.state):
        body["completedAt"] = iso(r.updated_at)  # a finished rollout's row changes no more
    if r.pause_info:
        body["pauseInfo"] = r.pause_info
    return body


def preview_json(p: Preview) -> dict[str, Any]:
    pair = {
        "sourceDeploymentId": wire_deployment_id(p.source_id),
        "targetDeploymentId": wire_deployment_id(p.target_id),
    }
    body: dict[str, Any] = {
        "sourceReplicas": p.source_replicas,
        "targetReplicas": p.target_replicas,
        "targetMinReplicas": p.target_min_replicas,
        "targetMaxReplicas": p.target_max_replicas,
        "warnings": [{"code": code, "message": message} for code, message in p.warnings],
        "spec": pair | p.spec,
        "estimatedEffectiveSteps": [{"traffic": percent} for percent in p.effective_steps],
        "frozenPair": p.seed_percent is not None,
    }
    if p.seed_percent is not None:
        body["estimatedSeedPercent"] = p.seed_percent
    return body


# --- routes ----------------------------------------------------------------------------------------
@router.post(R)
def create_rollout(
    endpoint_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep, body: JsonBody = None
) -> dict[str, Any]:
    return rollout_json(rollouts.create(who, routes.get(who, endpoint_id), body or {}))


@router.post(f"{R}/preview-defaults")
def preview_rollout(
    endpoint_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep, body: JsonBody = None
) -> dict[str, Any]:
    return preview_json(rollouts.preview(who, routes.get(who, endpoint_id), body or {}))


@router.get(R)
def list_rollouts(
    endpoint_id: str,
    who: ProjectDep,
    routes: RoutesDep,
    rollouts: RolloutsDep,
    filter: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    listed = rollouts.listed(routes.get(who, endpoint_id), filter)
    return page(listed, rollout_json, "id", limit, after)


@router.get(R + "/{rollout_id}")
def get_rollout(
    endpoint_id: str, rollout_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep
) -> dict[str, Any]:
    return rollout_json(rollouts.get(routes.get(who, endpoint_id), rollout_id))


@router.delete(R + "/{rollout_id}")
def delete_rollout(
    endpoint_id: str,
    rollout_id: str,
    who: ProjectDep,
    routes: RoutesDep,
    rollouts: RolloutsDep,
    etag: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    rollouts.delete(routes.get(who, endpoint_id), rollout_id, etag)
    return {}  # not an empty body: the SDK crashes on one with a JSON content type


@router.post(R + "/{rollout_id}/start")
def start_rollout(
    endpoint_id: str, rollout_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep
) -> dict[str, Any]:
    return rollout_json(rollouts.start(routes.get(who, endpoint_id), rollout_id))


class Move(Camel):
    """The body of pause, resume, promote and cancel; every field optional (an empty body is no body)."""

    etag: str | None = None
    reason: str | None = None
    disposition: str | None = None


MoveBody = Annotated[Move | None, Body()]


@router.post(R + "/{rollout_id}/pause")
def pause_rollout(
    endpoint_id: str, rollout_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep, body: MoveBody = None
) -> dict[str, Any]:
    move = body or Move()
    return rollout_json(rollouts.pause(routes.get(who, endpoint_id), rollout_id, move.reason, move.etag))


@router.post(R + "/{rollout_id}/resume")
def resume_rollout(
    endpoint_id: str, rollout_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep, body: MoveBody = None
) -> dict[str, Any]:
    return rollout_json(rollouts.resume(routes.get(who, endpoint_id), rollout_id, (body or Move()).etag))


@router.post(R + "/{rollout_id}/promote")
def promote_rollout(
    endpoint_id: str, rollout_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep, body: MoveBody = None
) -> dict[str, Any]:
    return rollout_json(rollouts.promote(routes.get(who, endpoint_id), rollout_id, (body or Move()).etag))


@router.post(R + "/{rollout_id}/cancel")
def cancel_rollout(
    endpoint_id: str, rollout_id: str, who: ProjectDep, routes: RoutesDep, rollouts: RolloutsDep, body: MoveBody = None
) -> dict[str, Any]:
    move = body or Move()
    route = routes.get(who, endpoint_id)
    return rollout_json(rollouts.cancel(route, rollout_id, move.reason, move.disposition, move.etag))
