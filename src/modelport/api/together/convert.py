"""Domain rows to Together wire shapes."""

from __future__ import annotations

from datetime import UTC, datetime

from modelport.api.together.protocol import JobResponse, ModelDetail, ModelItem, Pricing, StatusUpdate
from modelport.catalog.service import JobView
from modelport.manifest import ModelType, context_length_of
from modelport.storage.db.tables import Model


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job(view: JobView) -> JobResponse:
    j = view.job
    args = {k: v for k, v in j.args.items() if v is not None}
    error = {"code": j.error_code, "message": j.error_message} if j.error_code else None
    return JobResponse(
        type=j.type,
        job_id=j.id,
        status=j.status,
        status_updates=[
            StatusUpdate(status=u.status, message=u.message, timestamp=iso(u.timestamp)) for u in view.updates
        ],
        args=args,
        created_at=iso(j.created_at),
        updated_at=iso(j.updated_at),
        model_id=j.model_id,
        progress=j.progress,
        error=error,
    )


def model_item(m: Model, base_name: str | None, max_model_len: int) -> ModelItem:
    """``context_length`` is what the model is served with: its own, capped by ``MODELPORT_MAX_MODEL_LEN``."""
    account, _, short = m.name.partition("/")
    return ModelItem(
        id=m.name,
        created=int(m.created_at.timestamp()),
        type=m.type or ModelType.LANGUAGE,
        display_name=short,
        organization=account,
        owned_by=account,
        context_length=context_length_of(m.manifest, max_model_len),
        pricing=Pricing(),
        kind=m.kind,
        base_model=base_name,
        description=m.description,
        bytes=m.total_bytes,
    )


def model_detail(m: Model, base_name: str | None, max_model_len: int) -> ModelDetail:
    manifest = m.manifest.to_json() if m.manifest else {}
    item = model_item(m, base_name, max_model_len).model_dump()
    return ModelDetail(**item, model_id=m.id, revision_id=m.revision_id, manifest=manifest)
