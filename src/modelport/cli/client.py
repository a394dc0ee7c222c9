"""A small typed client of modelport's HTTP API: what the CLI calls (it never opens the database).

Every failure becomes one of three exceptions, so the CLI can explain it from one table
(``cli/errors.py``): ``Unreachable`` (no answer), ``ApiError`` (an error envelope, with the
status, machine code and the resource it was about), ``NotFoundError`` (a 404, naming what was missing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from modelport import __version__

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """Anything the API client raises."""


class Unreachable(ClientError):
    def __init__(self, base_url: str, reason: str) -> None:
        super().__init__(f"cannot reach modelport at {base_url}: {reason}")
        self.base_url = base_url


class ApiError(ClientError):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        resource: str | None = None,
        ref: str | None = None,
        retry_after: str | None = None,
        param: str | None = None,
        sent: Any = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.resource, self.ref, self.retry_after = resource, ref, retry_after
        self.param = param  # the request field the error is about (``base_model``), when the server says
        self.sent = sent  # what this request sent in that field


class NotFoundError(ApiError):
    """A 404: the resource does not exist, or belongs to another account (the server does not say which)."""


def _error_from(resp: httpx.Response, resource: str | None, ref: str | None, sent: Any = None) -> ApiError:
    code = param = None
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message, code = str(body["error"].get("message")), body["error"].get("code")
            param = body["error"].get("param")
        else:
            message = str(body.get("detail") if isinstance(body, dict) else body)
    except ValueError:
        message = resp.text[:500] or resp.reason_phrase
    kind = NotFoundError if resp.status_code == 404 else ApiError
    retry = resp.headers.get("retry-after")
    value = sent.get(param) if isinstance(sent, dict) and isinstance(param, str) else None
    return kind(
        resp.status_code, message, code=code, resource=resource, ref=ref, retry_after=retry, param=param, sent=value
    )


def _segment(ref: str) -> str:
    """Model and endpoint names hold a ``/`` (``account/name``): the routes accept it as is."""
    if not ref.strip():
        raise ApiError(400, "an empty id or name was given", code="invalid_request")
    return quote(ref, safe="/")


class Client:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": f"modelport-cli/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, resource: str | None = None, ref: str | None = None, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise Unreachable(self.base_url, type(e).__name__) from e
        if resp.status_code >= 400:
            raise _error_from(resp, resource, ref, kw.get("json"))
        return resp.json() if resp.content else None

    def stream_events(self, path: str, body: dict[str, Any], *, resource: str, ref: str) -> Iterator[dict[str, Any]]:
        """POST with ``stream: true`` and yield each server-sent event's JSON until ``[DONE]``."""
        try:
            with self.http.stream("POST", path, json={**body, "stream": True}, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error_from(resp, resource, ref, body)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:  # an error after the stream began
                        error = event["error"]
                        message, code, param = str(error.get("message")), error.get("code"), error.get("param")
                        raise ApiError(500, message, code=code, resource=resource, ref=ref, param=param)
                    yield event
        except httpx.TransportError as e:
            raise Unreachable(self.base_url, type(e).__name__) from e

    # --- identity ---------------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/v1/whoami")
        return result

    # --- models and jobs --------------------------------------------------------------------------
    def create_model(self, **body: Any) -> dict[str, Any]:
        fields = {k: v for k, v in body.items() if v is not None}
        result: dict[str, Any] = self.call("POST", "/v1/models", json=fields, resource="model", ref=body["model_name"])
        return result

    def list_models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/v1/models")["data"]
        return result

    def get_model(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/models/{_segment(ref)}", resource="model", ref=ref)
        return result

    def delete_model(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("DELETE", f"/v1/models/{_segment(ref)}", resource="model", ref=ref)
        return result

    def list_revisions(self, ref: str) -> dict[str, Any]:
        path = f"/api/v1/models/{_segment(ref)}/revisions"
        result: dict[str, Any] = self.call("GET", path, resource="model", ref=ref)
        return result

    def add_revision(self, ref: str, model_source: str, hf_token: str | None = None) -> dict[str, Any]:
        body = {"model_source": model_source, "hf_token": hf_token}
        path = f"/api/v1/models/{_segment(ref)}/revisions"
        result: dict[str, Any] = self.call("POST", path, json=body, resource="model", ref=ref)
        return result

    def list_jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        result: list[dict[str, Any]] = self.call("GET", "/v1/jobs", params=params)["data"]
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/jobs/{_segment(job_id)}", resource="job", ref=job_id)
        return result

    def preflight(
        self,
        *,
        model_name: str,
        model_type: str,
        base_model: str | None,
        model_source: str | None,
        files: list[str] | None,
    ) -> dict[str, Any]:
        """The server's checks before any byte moves (name free, base exists, files of the right kind).

        ``model_source`` is the remote source (None for local ones); ``files`` the names about to be
        packed (None for archives and remote sources)."""
        body = {
            "model_name": model_name,
            "model_type": model_type,
            "base_model": base_model,
            "model_source": model_source,
            "files": files,
        }
        result: dict[str, Any] = self.call(
            "POST", "/api/v1/models/preflight", json=body, resource="model", ref=model_name
        )
        return result

    def download_plan(self, ref: str, paths: Sequence[str] = (), revision: str | None = None) -> dict[str, Any]:
        """Together v2's download plan (``cli/download.py`` fetches it): ``{revisionId, files: [{path, hash,
        sizeBytes, parts: [{partNumber, sizeBytes, url, headers}]}]}``. ``ref`` is an id or a name, where
        ``name@N`` pins revision N; ``paths`` empty means every file; project ``null`` is the caller's own."""
        body = {"objectId": ref, "paths": list(paths), "revisionId": revision}
        path = "/v2/projects/null/models/download"
        result: dict[str, Any] = self.call("POST", path, json=body, resource="model", ref=ref)
        return result

    # --- uploads ----------------------------------------------------------------------------------
    def list_uploads(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/api/v1/uploads")["data"]
        return result

    def delete_upload(self, upload_id: str) -> None:
        self.call("DELETE", f"/api/v1/uploads/{_segment(upload_id)}", resource="upload", ref=upload_id)

    # --- endpoints and hardware -------------------------------------------------------------------
    def hardware(self, model: str | None = None) -> list[dict[str, Any]]:
        params = {"model": model} if model else {}
        result: list[dict[str, Any]] = self.call("GET", "/v1/hardware", params=params, resource="model", ref=model)[
            "data"
        ]
        return result

    def create_endpoint(self, **body: Any) -> dict[str, Any]:
        fields = {k: v for k, v in body.items() if v is not None}
        result: dict[str, Any] = self.call("POST", "/v1/endpoints", json=fields, resource="model", ref=body["model"])
        return result

    def list_endpoints(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/v1/endpoints")["data"]
        return result

    def get_endpoint(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/endpoints/{_segment(ref)}", resource="endpoint", ref=ref)
        return result

    def update_endpoint(self, ref: str, **changes: Any) -> dict[str, Any]:
        path = f"/v1/endpoints/{_segment(ref)}"
        result: dict[str, Any] = self.call("PATCH", path, json=changes, resource="endpoint", ref=ref)
        return result

    def delete_endpoint(self, ref: str) -> None:
        self.call("DELETE", f"/v1/endpoints/{_segment(ref)}", resource="endpoint", ref=ref)

    # --- API keys ---------------------------------------------------------------------------------
    def list_keys(self, account: str | None = None) -> list[dict[str, Any]]:
        params = {"account": account} if account else {}
        result: list[dict[str, Any]] = self.call("GET", "/api/v1/keys", params=params)["data"]
        return result

    def create_key(self, account: str | None = None, name: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/api/v1/keys", json={"account": account, "name": name})
        return result

    def revoke_key(self, key_id: str) -> None:
        self.call("DELETE", f"/api/v1/keys/{_segment(key_id)}", resource="key", ref=key_id)

    # --- usage ------------------------------------------------------------------------------------
    def usage(self, **filters: str | None) -> list[dict[str, Any]]:
        """Rows of ``GET /api/v1/usage``; filters: since, until (YYYY-MM-DD), model, account."""
        params = {k: v for k, v in filters.items() if v}
        result: list[dict[str, Any]] = self.call("GET", "/api/v1/usage", params=params)["data"]
        return result

    # --- inference --------------------------------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST", "/v1/chat/completions", json=body, resource="model", ref=body["model"]
        )
        return result

    def chat_stream(self, body: dict[str, Any]) -> Iterator[str]:
        """The reply's text as it is generated."""
        for event in self.stream_events("/v1/chat/completions", body, resource="model", ref=body["model"]):
            for choice in event.get("choices", []):
                if text := (choice.get("delta") or {}).get("content"):
                    yield text

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/v1/completions", json=body, resource="model", ref=body["model"])
        return result

    def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/v1/embeddings", json=body, resource="model", ref=body["model"])
        return result

    def complete_stream(self, body: dict[str, Any]) -> Iterator[str]:
        for event in self.stream_events("/v1/completions", body, resource="model", ref=body["model"]):
            for choice in event.get("choices", []):
                if text := choice.get("text"):
                    yield text
