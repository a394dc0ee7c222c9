"""``/v0/models/upload``, ``/v0/models``: Nebius' custom-model routes over the same ingestion jobs.

Statuses map from the job: Queued/Running → ``validating``, Complete → ``active`` (``deleted`` once the
model is gone), Failed → ``error`` with the reason in ``status_details``. Errors use FastAPI's
``{"detail": ...}`` shape (see ``api/errors.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from modelport.api.bodies import check_declared_length, receive_multipart_file
from modelport.api.deps import CatalogDep, PrincipalDep, SettingsDep, UploadsDep
from modelport.catalog.service import JobView, UploadRequest
from modelport.errors import NotFound
from modelport.storage.db.tables import Upload

router = APIRouter()

_STATUS = {"Queued": "validating", "Running": "validating", "Complete": "active", "Failed": "error"}


class NebiusModelCreate(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    source: str
    base_model: str | None = None
    description: str | None = None


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def file_json(upload: Upload) -> dict[str, Any]:
    return {
        "id": upload.id,
        "bytes": upload.size,
        "created_at": _ts(upload.created_at),
        "filename": upload.filename,
        "object": "file",
        "purpose": upload.purpose,
        "status": "uploaded",
        "status_details": None,
    }


def model_json(view: JobView, exists: bool) -> dict[str, Any]:
    job, args = view.job, view.job.args
    status = _STATUS.get(job.status, "validating")
    if status == "active" and not exists:
        status = "deleted"
    return {
        "name": args.get("modelName"),
        "base_model": args.get("baseModel"),
        "source": args.get("modelSource"),
        "created_at": _ts(job.created_at),
        "status": status,
        "status_details": job.error_message if status == "error" else None,
        "description": args.get("description") or None,
        "job_id": job.id,
    }


def _models(who: Any, catalog: Any) -> list[dict[str, Any]]:
    names = {m.name for m in catalog.list_models(who)}
    latest: dict[str, dict[str, Any]] = {}
    for view in catalog.list_jobs(who, limit=1000):  # newest first: the first job per name wins
        item = model_json(view, view.job.args.get("modelName") in names)
        latest.setdefault(str(item["name"]), item)
    return list(latest.values())


def _find(who: Any, catalog: Any, name: str) -> dict[str, Any]:
    for item in _models(who, catalog):
        if name in (item["name"], str(item["name"]).partition("/")[2]):
            return item
    raise NotFound(f"model {name!r} not found")


@router.post("/models/upload")
async def upload_model_file(
    request: Request, who: PrincipalDep, settings: SettingsDep, uploads: UploadsDep, ai_project_id: str | None = None
) -> dict[str, Any]:
    check_declared_length(request, settings.max_upload_bytes)
    upload = await receive_multipart_file(request, lambda filename: uploads.begin(who, filename))
    return file_json(upload)


@router.post("/models")
def create_model(
    body: NebiusModelCreate, who: PrincipalDep, catalog: CatalogDep, ai_project_id: str | None = None
) -> dict[str, Any]:
    submitted = catalog.submit_upload(
        who,
        UploadRequest(
            model_name=body.name,
            model_source=body.source,
            model_type="adapter" if body.base_model else "model",
            base_model=body.base_model,
            description=body.description,
        ),
    )
    return model_json(catalog.get_job(who, submitted.job_id), exists=False)


@router.get("/models")
def list_models(who: PrincipalDep, catalog: CatalogDep, ai_project_id: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": _models(who, catalog)}


@router.get("/models/{name:path}")
def get_model(name: str, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    return _find(who, catalog, name)


@router.delete("/models/{name:path}")
def delete_model(name: str, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    item = _find(who, catalog, name)
    catalog.delete_model(who, str(item["name"]))
    return item | {"status": "deleted"}
