"""``POST /api/v1/models/preflight``: is this upload going to be accepted? Asked before any byte moves.

The CLI and the console call it before sending an archive, so a taken name, a misspelled base or adapter
files sent as a model are reported in a second instead of after the upload and a job. ``POST /v1/models``
and ``POST /v0/models`` run the same checks (without ``files``) before creating a job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from modelport.api.deps import CatalogDep, PrincipalDep

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
