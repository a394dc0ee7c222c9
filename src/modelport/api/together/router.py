"""Together's management routes: model uploads, jobs, the model list, identity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from modelport.api.deps import CatalogDep, PrincipalDep
from modelport.api.together import convert
from modelport.api.together.protocol import (
    JobResponse,
    ModelDetail,
    ModelUploadData,
    ModelUploadRequest,
    ModelUploadResponse,
)
from modelport.catalog.service import UploadRequest

router = APIRouter()


def wants_bare_list(request: Request) -> bool:
    """Together's SDKs parse ``GET /v1/models`` as a bare array; the openai SDK wants a list object."""
    agent = request.headers.get("user-agent", "")
    return agent.startswith(("Together/", "AsyncTogether/"))


@router.post("/models", response_model=ModelUploadResponse)
def upload_model(body: ModelUploadRequest, who: PrincipalDep, catalog: CatalogDep) -> ModelUploadResponse:
    submitted = catalog.submit_upload(
        who,
        UploadRequest(
            model_name=body.model_name,
            model_source=body.model_source,
            model_type=body.model_type,
            hf_token=body.hf_token,
            description=body.description,
            base_model=body.base_model,
            lora_model=body.lora_model,
            tool_call_parser=body.tool_call_parser,
        ),
    )
    data = ModelUploadData(
        job_id=submitted.job_id,
        model_name=submitted.model_name,
        model_id=submitted.model_id,
        model_source=submitted.source.kind,
    )
    return ModelUploadResponse(data=data, message="job created")


@router.get("/jobs/{job_id}", response_model=JobResponse)
def get_job(job_id: str, who: PrincipalDep, catalog: CatalogDep) -> JobResponse:
    return convert.job(catalog.get_job(who, job_id))


JOB_EVENT_POLL_S = 0.5


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse)
async def job_events(job_id: str, request: Request, who: PrincipalDep, catalog: CatalogDep) -> StreamingResponse:
    """modelport addition: the job as server-sent events, one each time it changes, until it ends."""
    first = await run_in_threadpool(catalog.get_job, who, job_id)  # a 404 before the stream starts

    async def events() -> AsyncIterator[str]:
        view, last = first, ""
        while True:
            body = convert.job(view).model_dump_json()
            if body != last:
                yield f"event: job\ndata: {body}\n\n"
                last = body
            if view.job.status in ("Complete", "Failed") or await request.is_disconnected():
                return
            await asyncio.sleep(JOB_EVENT_POLL_S)
            view = await run_in_threadpool(catalog.get_job, who, job_id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.get("/jobs")
def list_jobs(who: PrincipalDep, catalog: CatalogDep, status: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": [convert.job(v).model_dump() for v in catalog.list_jobs(who, status)]}


@router.get("/models")
def list_models(request: Request, who: PrincipalDep, catalog: CatalogDep) -> Any:
    models = catalog.list_models(who)
    names = {m.id: m.name for m in models}
    cap = catalog.settings.max_model_len
    items = [convert.model_item(m, names.get(m.base_model_id or ""), cap).model_dump() for m in models]
    return items if wants_bare_list(request) else {"object": "list", "data": items}


@router.get("/models/{model_ref:path}", response_model=ModelDetail)
def get_model(model_ref: str, who: PrincipalDep, catalog: CatalogDep) -> ModelDetail:
    model = catalog.get_model(who, model_ref)
    return convert.model_detail(model, catalog.base_name(model), catalog.settings.max_model_len)


@router.delete("/models/{model_ref:path}")
def delete_model(model_ref: str, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    model = catalog.delete_model(who, model_ref)
    _, at, revision = model_ref.partition("@")  # ``name@3``: only that revision went
    return {"id": f"{model.name}{at}{revision}", "object": "model.revision" if at else "model", "deleted": True}


def whoami(who: PrincipalDep) -> dict[str, Any]:
    return {
        "type": "project_api_key",
        "api_key": {"id": who.key_id},
        "organization": {"id": who.account_id, "name": who.account_name},
        "project": {"id": who.account_id, "name": who.account_name, "slug": who.account_name},
    }


def projects(who: PrincipalDep) -> dict[str, Any]:
    """Together 3.x's projects (snake_case, one page): each account is one organization with one
    project, whose slug (the account's name) prefixes its models' names."""
    project = {
        "id": who.account_id,
        "name": who.account_name,
        "slug": who.account_name,
        "organization_id": who.account_id,
        "organization_name": who.account_name,
    }
    return {"object": "list", "data": [project], "next_cursor": None}


identity_router = APIRouter()
identity_router.add_api_route("/v1/whoami", whoami, methods=["GET"])
identity_router.add_api_route("/v3/whoami", whoami, methods=["GET"])
identity_router.add_api_route("/v1/projects", projects, methods=["GET"])


@identity_router.get("/health", include_in_schema=False)
def health() -> Response:
    return Response('{"status":"ok"}', media_type="application/json")
