"""Resumable, verifiable uploads: ``/api/v1/uploads``. See docs/uploads.md for a curl walk-through."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from modelport.api.bodies import receive_raw
from modelport.api.deps import PrincipalDep, UploadsDep
from modelport.ingest.uploads import UploadView

router = APIRouter()


class UploadCreate(BaseModel):
    filename: str = Field(min_length=1)
    bytes: int = Field(gt=0)
    sha256: str | None = Field(default=None, description="the whole file's sha256; checked at complete")
    part_size: int | None = Field(default=None, gt=0)


def view_json(view: UploadView) -> dict[str, Any]:
    u = view.upload
    parts = -(-u.size // u.part_size) if u.part_size else None
    return {
        "id": u.id,
        "object": "upload",
        "filename": u.filename,
        "bytes": u.size,
        "sha256": u.sha256,
        "part_size": u.part_size,
        "parts": parts,
        "received": view.received,
        "missing": view.missing,
        "status": u.status,
        "created_at": int(u.created_at.timestamp()),
    }


@router.post("/uploads")
def create_upload(body: UploadCreate, who: PrincipalDep, uploads: UploadsDep) -> dict[str, Any]:
    return view_json(uploads.create(who, body.filename, body.bytes, body.sha256, body.part_size))


@router.get("/uploads")
def list_uploads(who: PrincipalDep, uploads: UploadsDep) -> dict[str, Any]:
    """The caller's uploads, newest first, finished or not: what to resume, use or delete."""
    return {"object": "list", "data": [view_json(v) for v in uploads.list(who)]}


@router.get("/uploads/{upload_id}")
def get_upload(upload_id: str, who: PrincipalDep, uploads: UploadsDep) -> dict[str, Any]:
    return view_json(uploads.view(who, upload_id))


@router.put("/uploads/{upload_id}/parts/{number}")
async def put_part(
    upload_id: str,
    number: int,
    request: Request,
    who: PrincipalDep,
    uploads: UploadsDep,
    x_part_sha256: str | None = Header(default=None, description="sha256 (hex) of this part's bytes; checked if sent"),
) -> dict[str, Any]:
    upload, target, offset, length = uploads.open_part(who, upload_id, number)
    size, digest = await receive_raw(request, target, offset, length)
    uploads.accept_part(upload, number, size, digest, x_part_sha256)
    return {"part": number, "bytes": size, "sha256": digest}


@router.post("/uploads/{upload_id}/complete")
def complete_upload(upload_id: str, who: PrincipalDep, uploads: UploadsDep) -> dict[str, Any]:
    uploads.complete(who, upload_id)
    return view_json(uploads.view(who, upload_id))


@router.delete("/uploads/{upload_id}", status_code=204)
def delete_upload(upload_id: str, who: PrincipalDep, uploads: UploadsDep) -> None:
    uploads.delete(who, upload_id)
