"""Together 3.x's project-scoped model API (``/v2/projects/{project}/models…``; ``shared/WIRE-v2.md``).

Each account is one organization with one project (``router.projects``), so ``{project}`` is the
caller's account id; the literal ``null`` (what the 3.1.1 CLI sends when no project is set) means the
caller's own, and any other id answers 404 like a missing model. Bodies and queries are camelCase with
int64 values as strings; lists are pages (``limit``, ``after`` → ``next_cursor``). Model ids are the
``ml_`` form of ours (``ids.wire_model_id``); every route also takes our id or the model's name.
The signed part URLs (``PUT`` and ``GET`` under ``/v2/transfer``) carry no key: their signature is the
permission (``catalog/transfers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelport.accounts.service import Principal
from modelport.api.deps import CatalogDep, PrincipalDep, TransfersDep, get_principal
from modelport.api.together.convert import iso
from modelport.catalog.service import Catalog, JobView
from modelport.errors import InvalidRequest, NotFound
from modelport.ids import wire_model_id
from modelport.ingest import etags
from modelport.ingest.sources import SourceKind
from modelport.jobs.states import JobStatus, RevisionStatus
from modelport.manifest import ModelKind
from modelport.storage.db.tables import Model, ModelRevision

router = APIRouter()
transfer_router = APIRouter()  # the signed URLs: no API key

T = TypeVar("T")
MAX_PAGE = 1000


def project(project_id: str, who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """The caller, if ``{project_id}`` is their project (or ``null``: the 3.1.1 CLI's unset project)."""
    if project_id not in (who.account_id, "null"):
        raise NotFound(f"project {project_id!r} not found", param="projectId")
    return who


ProjectDep = Annotated[Principal, Depends(project)]


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def page(
    items: Sequence[T], to_json: Callable[[T], dict[str, Any]], key: str, limit: int | None, after: str | None
) -> dict[str, Any]:
    """One page of ``items`` (in order) after the one whose ``key`` is ``after``."""
    rows = [to_json(i) for i in items]
    if after:
        ids = [r.get(key) for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    size = min(limit or MAX_PAGE, MAX_PAGE)
    more = len(rows) > size
    rows = rows[:size]
    return {"object": "list", "data": rows, "next_cursor": rows[-1].get(key) if more and rows else None}


# --- shapes ----------------------------------------------------------------------------------------
def model_path(m: Model) -> str:
    return f"projects/{m.account_id}/models/{wire_model_id(m.id)}"


def model_json(m: Model, base: Model | None) -> dict[str, Any]:
    manifest = m.manifest
    weights: dict[str, Any] = {
        "type": "WEIGHTS_TYPE_ADAPTER" if m.kind == ModelKind.ADAPTER else "WEIGHTS_TYPE_DEFAULT"
    }
    if manifest is not None:
        if manifest.architecture:
            weights["architecture"] = manifest.architecture
        if manifest.context_length:
            weights["contextLength"] = str(manifest.context_length)
        if manifest.parameters:
            dtype = (manifest.dtype or "").upper()
            by_dtype = [{"dtype": dtype, "count": str(manifest.parameters)}] if dtype else []
            weights["parameters"] = {"total": str(manifest.parameters), "byDtype": by_dtype}
    body: dict[str, Any] = {
        "id": wire_model_id(m.id),
        "name": m.name,  # "<account>/<name>": the project's slug is the account's name
        "organizationId": m.account_id,
        "projectId": m.account_id,
        "visibility": "VISIBILITY_PRIVATE",
        "weights": weights,
        "createdAt": iso(m.created_at),
    }
    if base is not None:
        body["baseModel"], body["baseModelId"] = model_path(base), wire_model_id(base.id)
    if m.description:
        body["description"] = m.description
    if m.revision_id:
        body["revisionId"] = m.revision_id
    return body


VALIDATION = {
    RevisionStatus.PENDING: "REVISION_VALIDATION_STATUS_PENDING",
    RevisionStatus.READY: "REVISION_VALIDATION_STATUS_SUCCESS",
    RevisionStatus.FAILED: "REVISION_VALIDATION_STATUS_FAILED",
}


def revision_json(r: ModelRevision) -> dict[str, Any]:
    body: dict[str, Any] = {
        "revisionId": r.id,
        "createdAt": iso(r.created_at),
        "validationStatus": VALIDATION.get(RevisionStatus(r.status), "REVISION_VALIDATION_STATUS_ERROR"),
        "validationErrors": [{"rule": "ingest", "severity": "ERROR", "message": p} for p in r.problems or []],
    }
    if r.validated_at:
        body["lastValidatedAt"] = iso(r.validated_at)
    return body


def _with_bases(catalog: Catalog, who: Principal, models: list[Model]) -> list[tuple[Model, Model | None]]:
    by_id = {m.id: m for m in catalog.list_models(who, created=True)}
    return [(m, by_id.get(m.base_model_id or "")) for m in models]


# --- remote uploads --------------------------------------------------------------------------------
STATUS = {
    JobStatus.QUEUED: "REMOTE_UPLOAD_STATUS_PENDING",
    JobStatus.RUNNING: "REMOTE_UPLOAD_STATUS_RUNNING",
    JobStatus.COMPLETE: "REMOTE_UPLOAD_STATUS_SUCCEEDED",
    JobStatus.FAILED: "REMOTE_UPLOAD_STATUS_FAILED",
}


def remote_upload_json(view: JobView, max_attempts: int) -> dict[str, Any]:
    job = view.job
    message = job.error_message or (view.updates[-1].message if view.updates else "")
    body = {
        "id": job.id,
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
        "modelId": wire_model_id(job.model_id) if job.model_id else None,
        "projectId": job.account_id,
        "remoteUrl": job.args.get("modelSource"),  # as shown: signatures and credentials removed
        "status": STATUS[JobStatus(job.status)],
        "statusMessage": message,
        "restartCount": max(0, job.attempts - 1),
        "maxRestarts": max_attempts - 1,
        "revisionId": job.args.get("revisionId"),
    }
    return {k: v for k, v in body.items() if v is not None}


class CreateRemoteUpload(Camel):
    model_id: str
    remote_url: str
    token: str | None = None


@router.post("/projects/{project_id}/models/uploads")
def create_remote_upload(body: CreateRemoteUpload, who: ProjectDep, catalog: CatalogDep) -> dict[str, Any]:
    url = body.remote_url.strip()
    for prefix in ("https://huggingface.co/", "http://huggingface.co/"):  # a repo's page: its id follows
        if url.startswith(prefix) and "?" not in url:
            url = url.removeprefix(prefix).strip("/")
    submitted = catalog.submit_revision(who, body.model_id, url, body.token)
    return remote_upload_json(catalog.get_job(who, submitted.job_id), catalog.settings.job_max_attempts)


def _remote_uploads(catalog: Catalog, who: Principal) -> list[JobView]:
    """Jobs that make a revision from a remote source (not direct uploads, which have no remote URL)."""
    jobs = catalog.list_jobs(who, limit=MAX_PAGE)
    return [v for v in jobs if v.job.args.get("revisionId") and v.job.args.get("sourceKind") != SourceKind.PARTS]


@router.get("/projects/{project_id}/models/uploads")
def list_remote_uploads(
    who: ProjectDep, catalog: CatalogDep, limit: int | None = None, after: str | None = None
) -> dict[str, Any]:
    attempts = catalog.settings.job_max_attempts
    return page(_remote_uploads(catalog, who), lambda v: remote_upload_json(v, attempts), "id", limit, after)


@router.get("/projects/{project_id}/models/uploads/{upload_id}")
def get_remote_upload(upload_id: str, who: ProjectDep, catalog: CatalogDep) -> dict[str, Any]:
    return remote_upload_json(catalog.get_job(who, upload_id), catalog.settings.job_max_attempts)


@router.get("/projects/{project_id}/models/uploads/{upload_id}/events")
def remote_upload_events(
    upload_id: str, who: ProjectDep, catalog: CatalogDep, limit: int | None = None, after: str | None = None
) -> dict[str, Any]:
    view = catalog.get_job(who, upload_id)

    def event(u: Any) -> dict[str, Any]:
        level = "LEVEL_ERROR" if u.status == JobStatus.FAILED else "LEVEL_INFO"
        return {"id": str(u.id), "createdAt": iso(u.timestamp), "level": level, "message": u.message, "type": u.status}

    return page(view.updates, event, "id", limit, after)


# --- models ----------------------------------------------------------------------------------------
class CreateModel(Camel):
    name: str
    base_model_id: str | None = None
    type: str = "model"
    description: str | None = None


@router.post("/projects/{project_id}/models")
def create_model(body: CreateModel, who: ProjectDep, catalog: CatalogDep) -> dict[str, Any]:
    kind = body.type.lower().removesuffix("s")  # "models" and "adapters" are accepted too
    if kind not in (ModelKind.MODEL, ModelKind.ADAPTER):
        raise InvalidRequest("type must be 'model' or 'adapter'", param="type")
    # A full model's baseModelId names what it was derived from; this server keeps no such link.
    base = body.base_model_id if kind == ModelKind.ADAPTER else None
    if kind == ModelKind.ADAPTER and not base:
        raise InvalidRequest("an adapter needs baseModelId: the model it runs on", param="baseModelId")
    model = catalog.create_model(who, body.name, kind, base, body.description)
    return model_json(model, _base(catalog, who, model))


def _base(catalog: Catalog, who: Principal, model: Model) -> Model | None:
    return catalog.get_model(who, model.base_model_id, created=True) if model.base_model_id else None


@router.get("/projects/{project_id}/models")
def list_models(
    who: ProjectDep, catalog: CatalogDep, limit: int | None = None, after: str | None = None
) -> dict[str, Any]:
    models = _with_bases(catalog, who, catalog.list_models(who, created=True))
    return page(models, lambda mb: model_json(*mb), "id", limit, after)


@router.get("/organizations/{organization_id}/models")
def list_org_models(
    organization_id: str, who: PrincipalDep, catalog: CatalogDep, limit: int | None = None, after: str | None = None
) -> dict[str, Any]:
    if organization_id != who.account_id:
        raise NotFound(f"organization {organization_id!r} not found", param="organizationId")
    models = _with_bases(catalog, who, catalog.list_models(who, created=True))
    return page(models, lambda mb: model_json(*mb), "id", limit, after)


@router.get("/projects/{project_id}/models/{model_id:path}/revisions")
def list_revisions(
    model_id: str, who: ProjectDep, catalog: CatalogDep, limit: int | None = None, after: str | None = None
) -> dict[str, Any]:
    return page(catalog.revisions(who, model_id), revision_json, "revisionId", limit, after)


@router.get("/projects/{project_id}/models/{model_id:path}/files")
def list_files(
    model_id: str,
    who: ProjectDep,
    transfers: TransfersDep,
    revision_id: Annotated[str | None, Query(alias="revisionId")] = None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    _, revision = transfers.revision_for(who, model_id, revision_id)
    files = transfers.files(revision)
    listed = page(files, lambda f: {"path": f.path, "sizeBytes": str(f.size), "hash": f.etag}, "path", limit, after)
    total = sum(f.size for f in files)
    return {
        **listed,
        "revisionId": revision.id,
        "revisionCreatedAt": iso(revision.created_at),
        "totalSizeBytes": str(total),
    }


# Last: ``{model_id:path}`` (names hold a ``/``) would take the routes above as ids.
@router.get("/projects/{project_id}/models/{model_id:path}")
def get_model(model_id: str, who: ProjectDep, catalog: CatalogDep) -> dict[str, Any]:
    model = catalog.get_model(who, model_id, created=True)
    return model_json(model, _base(catalog, who, model))


class UpdateModel(Camel):
    name: str | None = None
    description: str | None = None
    visibility: str | None = None


@router.patch("/projects/{project_id}/models/{model_id:path}")
def update_model(
    model_id: str,
    body: UpdateModel,
    who: ProjectDep,
    catalog: CatalogDep,
    update_mask: Annotated[str, Query(alias="updateMask")] = "",
) -> dict[str, Any]:
    model = catalog.get_model(who, model_id, created=True)
    fields = {f.strip() for f in update_mask.split(",") if f.strip()} or set(body.model_fields_set)
    unknown = fields - {"name", "description", "visibility"}
    if unknown:
        raise InvalidRequest(f"updateMask names fields that cannot change: {', '.join(sorted(unknown))}")
    if "name" in fields and body.name not in (model.name, model.name.partition("/")[2]):
        raise InvalidRequest("a model's name is its inference name and cannot change", param="name")
    if "visibility" in fields and body.visibility not in (None, "VISIBILITY_PRIVATE"):
        raise InvalidRequest("models on this server are private to their project", param="visibility")
    if "description" in fields:
        model = catalog.update_model(who, model.id, description=body.description)
    return model_json(model, _base(catalog, who, model))


@router.delete("/projects/{project_id}/models/{model_id:path}")
def delete_model(model_id: str, who: ProjectDep, catalog: CatalogDep) -> dict[str, Any]:
    catalog.delete_model(who, model_id)
    return {}


# --- direct upload and download --------------------------------------------------------------------
class FileToUpload(Camel):
    path: str
    hash: str
    num_parts: int = Field(ge=1)


class CreateUpload(Camel):
    object_id: str
    files: list[FileToUpload] = Field(max_length=100_000)


@router.post("/projects/{project_id}/models/upload/create")
def create_upload(body: CreateUpload, request: Request, who: ProjectDep, transfers: TransfersDep) -> dict[str, Any]:
    listing = [(f.path, f.hash, f.num_parts) for f in body.files]
    planned = transfers.create_upload(who, body.object_id, listing, str(request.base_url).rstrip("/"))
    answer: list[dict[str, Any]] = []
    for f in planned:
        if f.skip or f.session is None:
            answer.append({"path": f.path, "skipUpload": True})
            continue
        parts = [{"partNumber": n, "url": url, "headers": {}} for n, url in enumerate(f.urls, start=1)]
        answer.append({"path": f.path, "uploadId": f.session.upload_id, "skipUpload": False, "parts": parts})
    return {"files": answer}


class PartDone(Camel):
    part_number: int
    hash: str


class UploadDetails(Camel):
    upload_id: str
    parts: list[PartDone] = Field(max_length=10_000)


class FileDone(Camel):
    path: str
    hash: str
    skip_upload: bool = False
    upload_details: UploadDetails | None = None


class CompleteUpload(Camel):
    object_id: str
    files: list[FileDone] = Field(max_length=100_000)


@router.post("/projects/{project_id}/models/upload/complete")
def complete_upload(body: CompleteUpload, who: ProjectDep, transfers: TransfersDep) -> dict[str, Any]:
    uploaded, skipped = [], []
    for f in body.files:
        if f.skip_upload:
            skipped.append((f.path, f.hash))
        elif f.upload_details is None:
            raise InvalidRequest(f"{f.path}: give uploadDetails, or skipUpload for a file that was skipped")
        else:
            parts = [(p.part_number, p.hash) for p in f.upload_details.parts]
            uploaded.append((f.path, f.hash, f.upload_details.upload_id, parts))
    return {"revisionId": transfers.complete_upload(who, body.object_id, uploaded, skipped)}


@transfer_router.put("/v2/transfer/parts/{upload_id}/{part_number}")
async def put_upload_part(
    upload_id: str, part_number: int, request: Request, transfers: TransfersDep, expires: int = 0, signature: str = ""
) -> Response:
    """One part of a direct upload: answered 200 with its MD5 as ``ETag``, as S3 answers ``UploadPart``."""
    md5 = await transfers.receive_part(upload_id, part_number, expires, signature, request.stream())
    return Response(status_code=200, headers={"ETag": f'"{md5}"'})


class Download(Camel):
    object_id: str
    paths: list[str] = Field(default_factory=list, max_length=100_000)
    revision_id: str | None = None


@router.post("/projects/{project_id}/models/download")
def download(body: Download, request: Request, who: ProjectDep, transfers: TransfersDep) -> dict[str, Any]:
    ref, _, pinned = body.object_id.partition("@")
    _, revision = transfers.revision_for(who, ref, body.revision_id or pinned or None)
    files = transfers.files(revision)
    if body.paths:
        missing = set(body.paths) - {f.path for f in files}
        if missing:
            raise NotFound(f"revision {revision.id} has no file {sorted(missing)[0]!r}", param="paths")
        files = [f for f in files if f.path in set(body.paths)]
    base = str(request.base_url).rstrip("/")
    answer = []
    for f in files:
        url = transfers.download_url(base, revision.id, f)
        parts = [
            {
                "partNumber": n,
                "sizeBytes": str(length),
                "url": url,
                # An empty file has one empty part, fetched whole: "bytes=0--1" is no range at all.
                "headers": {"Range": f"bytes={start}-{start + length - 1}"} if length else {},
            }
            for n, start, length in f.parts
        ]
        answer.append({"path": f.path, "hash": f.etag, "sizeBytes": str(f.size), "parts": parts})
    return {"revisionId": revision.id, "files": answer}


@transfer_router.get("/v2/transfer/files/{revision_id}/{path:path}")
def get_file(
    revision_id: str, path: str, request: Request, transfers: TransfersDep, expires: int = 0, signature: str = ""
) -> Response:
    """A stored file by a signed URL, whole or one ``Range`` of it (206). A blob on this machine's disk is
    sent by Starlette's ``FileResponse`` (ranges, sendfile-sized reads); others are streamed."""
    row = transfers.file_for_download(revision_id, path, expires, signature)
    start, end = _range(request.headers.get("range"), row.size)  # a bad range is 400 in either case
    etag = f'"{row.etag or row.sha256}"'
    blobs = transfers.blobs
    local = blobs.local_path(row.sha256)
    if local is not None:
        return FileResponse(local, media_type="application/octet-stream", headers={"ETag": etag})

    def chunks() -> Any:
        with blobs.open(row.sha256) as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := f.read(min(etags.READ, left))):
                left -= len(chunk)
                yield chunk

    headers = {"Content-Length": str(end - start + 1), "ETag": etag, "Accept-Ranges": "bytes"}
    partial = (start, end) != (0, row.size - 1)
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end}/{row.size}"
    return StreamingResponse(
        chunks(), status_code=206 if partial else 200, headers=headers, media_type="application/octet-stream"
    )


def _range(header: str | None, size: int) -> tuple[int, int]:
    """``bytes=a-b`` (one range; ``b`` and ``a`` as HTTP allows) within the file; the whole file without one."""
    if not header:
        return 0, size - 1
    unit, _, spec = header.partition("=")
    first, _, last = spec.partition("-")
    try:
        if unit.strip() != "bytes" or "," in spec:
            raise ValueError
        if not first:
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError:
        raise InvalidRequest(f"unsupported Range {header!r}: give one bytes=a-b range") from None
    if start > end or start >= size:
        raise InvalidRequest(f"Range {header!r} is outside the file's {size} bytes")
    return start, end
