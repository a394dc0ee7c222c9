"""Send a local file through the resumable upload API (``/api/v1/uploads``).

The upload's id is remembered by the file's sha256 under ``~/.cache/modelport/uploads``, so running
the same command again after an interruption sends only the parts the server does not have.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelport.cli.client import ApiError, Client, Unreachable

PART_BYTES = 64 * 2**20
PART_TRIES = 4


def upload_file(client: Client, path: Path, on_progress: Callable[[int], None] = lambda n: None) -> str:
    """Upload ``path``; returns the ``file-…`` id to use as a model source."""
    size = path.stat().st_size
    digest = _sha256(path)
    upload = _resume_or_create(client, path.name, size, digest)
    part = int(upload["part_size"])
    on_progress(sum(_part_len(n, part, size) for n in upload["received"]))  # sent by an earlier attempt
    with open(path, "rb") as f:
        for number in upload["missing"]:
            f.seek((number - 1) * part)
            data = f.read(part)
            put_part(client, upload["id"], number, data)
            on_progress(len(data))
            del data  # one part in memory at a time
    client.call("POST", f"/api/v1/uploads/{upload['id']}/complete", resource="upload", ref=upload["id"])
    _remember(digest, None)
    return str(upload["id"])


def _resume_or_create(client: Client, filename: str, size: int, digest: str) -> dict[str, Any]:
    known = _recall(digest)
    if known:
        try:
            upload: dict[str, Any] = client.call("GET", f"/api/v1/uploads/{known}")
            if upload["bytes"] == size and upload["status"] == "receiving":
                return upload
        except ApiError:
            pass  # expired or deleted: start again
    body = {"filename": filename, "bytes": size, "sha256": digest, "part_size": min(PART_BYTES, size)}
    upload = client.call("POST", "/api/v1/uploads", json=body)
    _remember(digest, upload["id"])
    return upload


def put_part(client: Client, upload_id: str, number: int, data: bytes) -> None:
    headers = {"X-Part-SHA256": hashlib.sha256(data).hexdigest()}
    for attempt in range(1, PART_TRIES + 1):
        try:
            client.call("PUT", f"/api/v1/uploads/{upload_id}/parts/{number}", content=data, headers=headers)
            return
        except (Unreachable, ApiError) as e:
            if attempt == PART_TRIES or (isinstance(e, ApiError) and e.status < 500):
                raise


def _state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelport" / "uploads"


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
