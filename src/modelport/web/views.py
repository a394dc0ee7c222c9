"""What the templates show: domain rows shaped for people, and the forms the pages post."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from modelport.catalog.service import JobView
from modelport.endpoints.service import Availability
from modelport.errors import InvalidRequest, ModelportError
from modelport.ingest.uploads import UploadView
from modelport.manifest import Manifest, ModelKind
from modelport.serving.usage import UsageRow
from modelport.storage.db.tables import Model, ModelRevision


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def when_unix(value: float) -> str:
    return when(datetime.fromtimestamp(value, UTC))


def duration(seconds: float) -> str:
    """``7 days``, ``1 day``, ``12 hours``: how long something is kept, in words."""
    value, unit = (seconds / 86400, "day") if seconds >= 86400 else (seconds / 3600, "hour")
    value = round(value, 1)
    return f"{value:g} {unit}" + ("" if value == 1 else "s")


def local_path(target: str) -> str:
    """Only paths on this site after sign-in: ``next=https://evil.example`` must not redirect away."""
    return target if target.startswith("/") and not target.startswith("//") else "/models"


class NewModelForm(BaseModel):
    csrf_token: str
    model_name: str
    source_kind: Literal["huggingface", "url", "file"] = "huggingface"
    hf_repo: str = ""
    url: str = ""
    file_id: str = ""
    model_type: Literal["model", "adapter"] = "model"
    base_model: str = ""
    hf_token: str = ""
    description: str = ""

    def source(self) -> str:
        value = {"huggingface": self.hf_repo, "url": self.url, "file": self.file_id}[self.source_kind].strip()
        if not value:
            what = {"huggingface": "a Hugging Face repo", "url": "an archive URL", "file": "a file"}[self.source_kind]
            raise InvalidRequest(f"choose {what} to upload from", param="model_source")
        return value


# The Add custom model page's own words for a refusal, naming its fields as they are labelled there
# (API messages name API fields). The page's script gets this same table (``form_words``), so an error
# found by the preflight in the browser and one found when the form posts read alike.
FIELD_OF_PARAM = {
    "model_name": "model_name",
    "model_type": "model_type",
    "base_model": "base_model",
    "model_source": "source",
    "files": "source",
    "file": "source",
}
FORM_WORDS = {
    "model_name_taken": "You already have a model named “{name}”, or one is still uploading under that name. "
    "Choose another Name.",
    "invalid_model_name": "A Name is 1 to 100 letters, digits, “.”, “_” or “-”, and starts with a letter or digit.",
    "base_model_not_found": "“{base}” is not one of your ready models. Choose another Base model, or leave it on "
    "“(from adapter_config.json)”.",
    # Keyed by the Type that was chosen: the archive holds the other kind.
    "model_type_mismatch:model": "This archive holds a LoRA adapter (adapter_config.json, no config.json). "
    "Choose the type “LoRA adapter” and its Base model.",
    "model_type_mismatch:adapter": "This archive holds a full model (config.json). Choose the type “Model”.",
}


@dataclass(frozen=True)
class FormError:
    field: str | None  # the form field it is shown next to; None: at the top of the form
    text: str


def form_words() -> dict[str, Any]:
    return {"fields": FIELD_OF_PARAM, "messages": FORM_WORDS}


def form_error(exc: ModelportError, model_name: str, model_type: str, base_model: str) -> FormError:
    key = f"{exc.code}:{model_type}" if exc.code == "model_type_mismatch" else exc.code
    words = FORM_WORDS.get(key)
    text = words.format(name=model_name.strip(), base=base_model) if words else exc.message
    return FormError(FIELD_OF_PARAM.get(exc.param or ""), text)


class EndpointForm(BaseModel):
    csrf_token: str
    model: str
    hardware: str
    display_name: str = ""
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    inactive_timeout: int | None = Field(default=None, ge=0)


def model_row(m: Model, base_name: str | None) -> dict[str, Any]:
    manifest = _manifest(m)
    return {
        "name": m.name,
        "kind": m.kind,
        "type": m.type or "-",
        "base": base_name,
        "size": m.total_bytes,
        "parameters": manifest.parameters,
        "context": manifest.context_length,
        "status": m.status,
        "created": m.created_at,
    }


def model_detail(m: Model, base_name: str | None) -> dict[str, Any]:
    manifest = _manifest(m)
    return {
        **model_row(m, base_name),
        "id": m.id,
        "description": m.description,
        "architecture": manifest.architecture,
        "model_type": manifest.model_type,
        "dtype": manifest.dtype,
        "adapter": manifest.adapter,
        "files": manifest.files,
        "admission": manifest.admission,
    }


@dataclass(frozen=True)
class Snippet:
    id: str
    label: str
    text: str


def usage_snippets(name: str, model_type: str | None, base_url: str) -> list[Snippet]:
    """How to call ``name`` from a terminal or code, with this server's address filled in: what Together's
    and Hugging Face's model pages show. The key stays a variable: a page must never print one."""
    base, quoted = base_url.rstrip("/"), json.dumps(name)
    if model_type == "embedding":
        call = f'vector = client.embeddings.create(model={quoted}, input="Hello").data[0].embedding'
        return _http_snippets(base, "embeddings", {"model": name, "input": "Hello"}, call)
    call = (
        f"reply = client.chat.completions.create(\n    model={quoted},\n"
        '    messages=[{"role": "user", "content": "Hello"}],\n    max_tokens=64,\n)\n'
        "print(reply.choices[0].message.content)"
    )
    body = {"model": name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 64}
    return [
        *_http_snippets(base, "chat/completions", body, call),
        Snippet(
            "snippet-together",
            "together CLI",
            f"export TOGETHER_BASE_URL={base}/v1 TOGETHER_API_KEY=$MODELPORT_API_KEY\n"
            f'together chat.completions --model {shlex.quote(name)} --message user "Hello" --max-tokens 64',
        ),
        Snippet(
            "snippet-modelport",
            "modelport CLI",
            f'export MODELPORT_BASE_URL={base}\nmodelport chat {shlex.quote(name)} --message "Hello" --max-tokens 64',
        ),
    ]


def _http_snippets(base: str, route: str, body: dict[str, Any], call: str) -> list[Snippet]:
    """curl and the openai SDK on ``/v1/{route}``; ``call`` is the SDK's line(s) after the client."""
    curl = (
        f'curl {base}/v1/{route} \\\n  -H "Authorization: Bearer $MODELPORT_API_KEY" \\\n'
        f"  -H \"Content-Type: application/json\" \\\n  -d '{json.dumps(body)}'"
    )
    client = f'client = OpenAI(base_url="{base}/v1", api_key=os.environ["MODELPORT_API_KEY"])\n'
    return [
        Snippet("snippet-curl", "curl", curl),
        Snippet("snippet-openai", "Python (openai)", "import os\nfrom openai import OpenAI\n\n" + client + call),
    ]


USAGE_DAYS = 7  # the dashboard's window


def usage_days(rows: list[UsageRow], since: date, until: date) -> list[dict[str, Any]]:
    """One row per day from ``since`` to ``until`` (days without requests too), every model summed, with
    each day's share of the busiest day's tokens for its bar."""
    days = {since + timedelta(days=i): [0, 0, 0] for i in range((until - since).days + 1)}
    for r in rows:
        if r.day in days:
            for i, n in enumerate((r.requests, r.prompt_tokens, r.completion_tokens)):
                days[r.day][i] += n
    busiest = max((p + c for _, p, c in days.values()), default=0) or 1
    return [
        {"day": day, "requests": n, "prompt_tokens": p, "completion_tokens": c, "share": (p + c) / busiest}
        for day, (n, p, c) in sorted(days.items(), reverse=True)
    ]


def revision_row(r: ModelRevision, head: str | None) -> dict[str, Any]:
    return {
        "number": r.number,
        "id": r.id,
        "status": r.status,
        "head": r.id == head,
        "size": r.total_bytes,
        "source": r.source,
        "job_id": r.job_id,
        "problems": r.problems or [],
        "created": r.created_at,
    }


def _manifest(m: Model) -> Manifest:
    """Models still uploading have no manifest yet: show them with an empty one."""
    return m.manifest or Manifest(kind=ModelKind(m.kind))


def job_row(view: JobView) -> dict[str, Any]:
    j = view.job
    return {
        "id": j.id,
        "model": j.args.get("modelName"),
        "status": j.status,
        "stage": (j.progress or {}).get("stage") or (view.updates[-1].status if view.updates else j.status),
        "updated": j.updated_at,
    }


def job_detail(view: JobView) -> dict[str, Any]:
    j = view.job
    failed = [u.message for u in view.updates if u.status == "Failed"]
    return {
        **job_row(view),
        "progress": j.progress or {},
        "error": {"code": j.error_code, "message": j.error_message} if j.error_code else None,
        "problems": failed,
        "updates": [{"status": u.status, "message": u.message, "at": u.timestamp} for u in view.updates],
        "created": j.created_at,
    }


def hardware_row(a: Availability) -> dict[str, Any]:
    c = a.config
    memory = c.gpu_memory_gb if c.is_cpu else c.gpu_memory_gb * c.gpu_count
    return {"id": c.id, "type": c.gpu_type, "count": c.gpu_count, "memory_gb": memory, "status": a.status or "-"}


def upload_row(view: UploadView) -> dict[str, Any]:
    u = view.upload
    done = u.status == "complete"
    parts = len(view.received) + len(view.missing)
    return {
        "id": u.id,
        "filename": u.filename,
        "size": u.size,
        "status": "complete" if done else "unfinished",
        "parts": None if done or not parts else f"{len(view.received)} of {parts} parts",
        "created": u.created_at,
    }
