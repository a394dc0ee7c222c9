"""A small typed client of modelport's HTTP API, for the CLI (never the database)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

PART_BYTES = 64 * 2**20
PART_TRIES = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelport" / "uploads"


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                body = resp.json()
                message = body["error"]["message"] if "error" in body else str(body.get("detail"))
            except (ValueError, KeyError, TypeError):
                message = resp.text[:500]
            raise ApiError(resp.status_code, message)
        return resp.json() if resp.content else None

    # --- uploads ----------------------------------------------------------------------------------
    def upload_file(self, path: Path, on_progress: Callable[[int], None] = lambda n: None) -> str:
        """Send ``path`` through the resumable upload API; resumes an earlier attempt at the same bytes."""
        size = path.stat().st_size
        digest = _sha256(path)
        upload = self._resume_or_create(path.name, size, digest)
        part = int(upload["part_size"])
        on_progress(sum(_part_len(n, part, size) for n in upload["received"]))  # sent by an earlier attempt
        with open(path, "rb") as f:
            for number in upload["missing"]:
                f.seek((number - 1) * part)
                data = f.read(part)
                self._put_part(upload["id"], number, data)
                on_progress(len(data))
                del data  # one part in memory at a time
        self._call("POST", f"/api/v1/uploads/{upload['id']}/complete")
        _remember(digest, None)
        return str(upload["id"])

    def _resume_or_create(self, filename: str, size: int, digest: str) -> dict[str, Any]:
        known = _recall(digest)
        if known:
            try:
                upload: dict[str, Any] = self._call("GET", f"/api/v1/uploads/{known}")
                if upload["bytes"] == size and upload["status"] == "receiving":
                    return upload
            except ApiError:
                pass  # expired or deleted: start again
        body = {"filename": filename, "bytes": size, "sha256": digest, "part_size": min(PART_BYTES, size)}
        upload = self._call("POST", "/api/v1/uploads", json=body)
        _remember(digest, upload["id"])
        return upload

    def _put_part(self, upload_id: str, number: int, data: bytes) -> None:
        headers = {"X-Part-SHA256": hashlib.sha256(data).hexdigest()}
        for attempt in range(1, PART_TRIES + 1):
            try:
                self._call("PUT", f"/api/v1/uploads/{upload_id}/parts/{number}", content=data, headers=headers)
                return
            except (httpx.TransportError, ApiError) as e:
                if attempt == PART_TRIES or (isinstance(e, ApiError) and e.status < 500):
                    raise

    # --- models and jobs --------------------------------------------------------------------------
    def create_model(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/models", json={k: v for k, v in body.items() if v})
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}")
        return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _part_len(number: int, part: int, size: int) -> int:
    return min(part, size - (number - 1) * part)


def _recall(digest: str) -> str | None:
    path = _state_dir() / f"{digest}.json"
    return str(json.loads(path.read_text())["id"]) if path.is_file() else None


def _remember(digest: str, upload_id: str | None) -> None:
    path = _state_dir() / f"{digest}.json"
    if upload_id is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": upload_id}))
