"""``POST /api/v1/models/preflight``: is this upload going to be accepted? Asked before any byte moves.
And a model's revisions: list, show (with files), add one from a source, delete one.

The CLI and the console call it before sending an archive, so a taken name, a misspelled base or adapter
files sent as a model are reported in a second instead of after the upload and a job. ``POST /v1/models``
and ``POST /v0/models`` run the same checks (without ``files``) before creating a job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from modelport.api.deps import CatalogDep, PrincipalDep
from modelport.api.together.convert import iso
from modelport.storage.db.tables import ModelRevision, RevisionFile

router = APIRouter()

MAX_FILES = 100_000  # far above any model folder; bounds the work one request can ask for
FileName = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class PreflightRequest(BaseModel):
    model_name: str
    # A plain string, not a Literal: the service's one check answers 400 with param model_type.
    model_type: str = "model"
    base_model: str | None = None
    model_source: str | None = Field(default=None, description="checked for syntax only; nothing is fetched")
    files: list[FileName] | None = Field(
        default=None,
        max_length=MAX_FILES,
        description="names in the folder about to be sent, relative to its top; the kind is read from them",
    )


@router.post("/models/preflight")
def preflight(body: PreflightRequest, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    checked = catalog.preflight(
        who,
        body.model_name,
        body.model_type,
        base_model=body.base_model,
        model_source=body.model_source,
        files=body.files,
    )
    return {
        "object": "preflight",
        "model_name": checked.model_name,
        "model_type": checked.model_type,
        "detected_type": checked.detected_type,
        "base_model": checked.base_model,
    }


# --- revisions -------------------------------------------------------------------------------------
class RevisionRequest(BaseModel):
    model_source: str = Field(description="where the new revision's files come from, as for POST /v1/models")
    hf_token: str | None = None


def revision_json(r: ModelRevision, head: str | None, files: list[RevisionFile] | None = None) -> dict[str, Any]:
    """A revision in the native API's shape (``modelport models revisions`` prints it)."""
    body: dict[str, Any] = {
        "object": "model.revision",
        "id": r.id,
        "number": r.number,
        "status": r.status,
        "head": r.id == head,
        "bytes": r.total_bytes,
        "source": r.source,
        "job_id": r.job_id,
        "problems": r.problems or [],
        "created_at": iso(r.created_at),
        "validated_at": iso(r.validated_at) if r.validated_at else None,
    }
    if files is not None:
        body["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]
    return body


@router.get("/models/{model_ref:path}/revisions")
def list_revisions(model_ref: str, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    model = catalog.get_model(who, model_ref, created=True)
    items = [revision_json(r, model.revision_id) for r in catalog.revisions(who, model.id)]
    return {"object": "list", "model": model.name, "data": items}


@router.get("/models/{model_ref:path}/revisions/{revision}")
def get_revision(model_ref: str, revision: str, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    model = catalog.get_model(who, model_ref, created=True)
    row = catalog.revision(who, model.id, revision)
    return revision_json(row, model.revision_id, catalog.revision_files(row))


@router.post("/models/{model_ref:path}/revisions", status_code=202)
def add_revision(model_ref: str, body: RevisionRequest, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    submitted = catalog.submit_revision(who, model_ref, body.model_source, body.hf_token)
    return {
        "object": "model.revision",
        "job_id": submitted.job_id,
        "model_name": submitted.model_name,
        "model_id": submitted.model_id,
        "revision_id": submitted.revision_id,
        "model_source": submitted.source.kind,
    }


@router.delete("/models/{model_ref:path}/revisions/{revision}")
def delete_revision(model_ref: str, revision: str, who: PrincipalDep, catalog: CatalogDep) -> dict[str, Any]:
    row = catalog.delete_revision(who, model_ref, revision)
    return {"object": "model.revision", "id": row.id, "number": row.number, "deleted": True}
