"""Together's wire shapes (``/v1``), as its 1.5.35 and 2.42.0 clients send and parse them."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

log = logging.getLogger(__name__)


class WireModel(BaseModel):
    """Accepts unknown fields (clients add some, e.g. ``allow_unsupported``) and logs their names."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_extras(self) -> WireModel:
        if self.model_extra:
            log.debug("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


class ModelUploadRequest(WireModel):
    model_name: str
    model_source: str
    model_type: Literal["model", "adapter"] = "model"
    hf_token: str | None = None
    description: str | None = None
    base_model: str | None = None
    lora_model: str | None = None
    tool_call_parser: str | None = None  # modelport's: how the model writes tool calls (default: from its template)


class ModelUploadData(BaseModel):
    job_id: str
    model_name: str
    model_id: str
    model_source: str


class ModelUploadResponse(BaseModel):
    data: ModelUploadData
    message: str


class StatusUpdate(BaseModel):
    status: str
    message: str
    timestamp: str


class JobResponse(BaseModel):
    type: str
    job_id: str
    status: str
    status_updates: list[StatusUpdate]
    args: dict[str, Any]
    created_at: str
    updated_at: str
    # modelport additions: live progress, the model it produces, and a stable error code.
    model_id: str | None = None
    progress: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class Pricing(BaseModel):
    base: float = 0.0
    finetune: float = 0.0
    hourly: float = 0.0
    input: float = 0.0
    output: float = 0.0


class ModelItem(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    type: str
    display_name: str
    organization: str
    owned_by: str
    context_length: int | None
    pricing: Pricing
    # modelport additions
    kind: str
    base_model: str | None = None
    description: str | None = None
    bytes: int = 0  # stored size of its files


class ModelDetail(ModelItem):
    model_id: str
    revision_id: str | None = None  # modelport: the revision shown (the head, or the one ``name@N`` pinned)
    manifest: dict[str, Any]  # ``modelport.manifest.Manifest`` in its JSON form (``to_json``), as stored
