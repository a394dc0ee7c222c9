"""Direct uploads: Nebius' multipart route and the resumable API, through to models that answer chat."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.settings import Settings
from tests.integration.helpers import run_all_jobs
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import archive_bytes, files_of


@pytest.fixture
def app(settings: Settings) -> Any:
    return create_app(
        settings.model_copy(update={"max_upload_bytes": 4 * 2**20, "upload_stall_timeout_s": 1.0}), run_workers=False
    )


@pytest.fixture
def client(app: Any) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(app) as c:
        yield c, {"Authorization": f"Bearer {app.state.services.accounts.create_key('acme')}"}


def uploads_left(app: Any) -> list[Path]:
    root = app.state.services.settings.uploads_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_nebius_upload_becomes_a_model_and_an_adapter_that_chat(
    client: tuple[TestClient, dict[str, str]], tiny_llama: Path, tiny_lora: Path
) -> None:
    http, auth = client
    base_tar = archive_bytes(files_of(tiny_llama), "tar.gz")
    resp = http.post(
        "/v0/models/upload", params={"ai_project_id": "p"}, files={"file": ("base.tar.gz", base_tar)}, headers=auth
    )
    assert resp.status_code == 200, resp.text
    file_obj = resp.json()
    assert file_obj["object"] == "file" and file_obj["bytes"] == len(base_tar) and file_obj["filename"] == "base.tar.gz"
    created = http.post("/v0/models", json={"name": "base", "source": file_obj["id"]}, headers=auth).json()
    assert created["status"] == "validating" and created["name"] == "acme/base"
    run_all_jobs(http.app.state.services)  # type: ignore[attr-defined]
    assert http.get("/v0/models/base", headers=auth).json()["status"] == "active"

    lora_zip = archive_bytes(files_of(tiny_lora), "zip")
    lora_file = http.post("/v0/models/upload", files={"file": ("lora.zip", lora_zip)}, headers=auth).json()
    body = {"name": "lora", "base_model": "acme/base", "source": lora_file["id"], "description": "mine"}
    assert http.post("/v0/models", json=body, headers=auth).json()["base_model"] == "acme/base"
    run_all_jobs(http.app.state.services)  # type: ignore[attr-defined]
    listed = {m["name"]: m for m in http.get("/v0/models", headers=auth).json()["data"]}
    assert listed["acme/lora"]["status"] == "active" and listed["acme/lora"]["description"] == "mine"
    for model in ("acme/base", "acme/lora"):
        chat = http.post(
            "/v1/chat/completions",
            headers=auth,
            json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
        )
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] >= 1, chat.text
    assert http.delete("/v0/models/acme/lora", headers=auth).json()["status"] == "deleted"
    assert http.get("/v0/models/lora", headers=auth).json()["status"] == "deleted"


def test_nebius_errors_use_fastapis_shape(client: tuple[TestClient, dict[str, str]], app: Any) -> None:
    http, auth = client
    missing = http.post("/v0/models/upload", data={"other": "x"}, headers=auth)
    assert missing.status_code == 422
    assert missing.json() == {"detail": [{"loc": ["body", "file"], "msg": "Field required", "type": "missing"}]}
    bad = http.post("/v0/models", json={"name": "x"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "source"]
    too_big = http.post("/v0/models/upload", files={"file": ("big.tar", b"\0" * (5 * 2**20))}, headers=auth)
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    assert http.get("/v0/models/nope", headers=auth).json() == {"detail": "model 'nope' not found"}
    garbled = http.post(
        "/v0/models/upload",
        content=b"--b\r\nnot a header line\r\n\r\nxx\r\n--b--\r\n",
        headers=auth | {"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert garbled.status_code == 400 and "malformed" in garbled.json()["detail"]
    assert uploads_left(app) == []
    with app.state.services.db.session() as s:
        from modelport.storage.db.tables import Upload

        assert s.query(Upload).count() == 0


def test_an_oversized_stream_without_length_is_cut_off_at_the_limit(app: Any) -> None:
    """No Content-Length (chunked): the server counts as bytes arrive and stops at the limit."""
    with TestClient(app):
        auth = {"Authorization": f"Bearer {app.state.services.accounts.create_key('acme')}"}
        with serve_in_thread(app) as url:
            boundary = "b0undary"

            def body() -> Iterator[bytes]:
                yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.tar"\r\n\r\n'.encode()
                for _ in range(10):
                    yield b"\0" * 2**20
                yield f"\r\n--{boundary}--\r\n".encode()

            headers = auth | {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            resp = httpx.post(f"{url}/v0/models/upload", content=body(), headers=headers, timeout=30)
            assert resp.status_code == 413
        assert uploads_left(app) == []


def test_curl_multipart_and_a_stalled_upload(app: Any, tmp_path: Path, tiny_llama: Path) -> None:
    archive = tmp_path / "model.tar"
    archive.write_bytes(archive_bytes(files_of(tiny_llama), "tar"))
    with TestClient(app):
        key = app.state.services.accounts.create_key("acme")
        with serve_in_thread(app) as url:
            out = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-H",
                    f"Authorization: Bearer {key}",
                    "-F",
                    f"file=@{archive}",
                    f"{url}/v0/models/upload?ai_project_id=p",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            assert '"object":"file"' in out.stdout.replace(" ", "")
            # A client that starts a body and then goes quiet is dropped, and its bytes are removed.
            host = urlparse(url)
            with socket.create_connection((host.hostname, host.port)) as sock:
                head = (
                    f"POST /v0/models/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                    "Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 100000\r\n\r\n"
                    '--zz\r\nContent-Disposition: form-data; name="file"; filename="s.tar"\r\n\r\n'
                )
                sock.sendall(head.encode() + b"\0" * 1000)
                sock.settimeout(10)
                reply = sock.recv(4096).decode(errors="replace")
            assert " 408 " in reply.splitlines()[0]
        time.sleep(0.2)
        leftovers = [p for p in uploads_left(app) if p.name != "archive"]
        assert leftovers == []


def test_resumable_upload_survives_interruption_and_refuses_corruption(
    client: tuple[TestClient, dict[str, str]], app: Any, tiny_llama: Path
) -> None:
    http, auth = client
    data = archive_bytes(files_of(tiny_llama), "tar.gz")
    part = 4096
    parts = [data[i : i + part] for i in range(0, len(data), part)]
    created = http.post(
        "/api/v1/uploads",
        json={
            "filename": "m.tar.gz",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "part_size": part,
        },
        headers=auth,
    ).json()
    upload_id = created["id"]
    assert created["parts"] == len(parts) and created["missing"] == list(range(1, len(parts) + 1))

    def put(n: int, body: bytes, digest: str | None = None) -> Any:
        headers = auth | {"X-Part-SHA256": digest or hashlib.sha256(body).hexdigest()}
        return http.put(f"/api/v1/uploads/{upload_id}/parts/{n}", content=body, headers=headers)

    half = len(parts) // 2
    for n in reversed(range(1, half + 1)):  # any order
        assert put(n, parts[n - 1]).status_code == 200
    # "Interrupted": the client comes back and asks what is missing.
    status = http.get(f"/api/v1/uploads/{upload_id}", headers=auth).json()
    assert status["received"] == list(range(1, half + 1)) and status["missing"][0] == half + 1
    corrupted = put(half + 1, parts[half], digest=hashlib.sha256(b"other").hexdigest())
    assert corrupted.status_code == 400 and "corrupted" in corrupted.json()["error"]["message"]
    early = http.post(f"/api/v1/uploads/{upload_id}/complete", headers=auth)
    assert early.status_code == 409 and "missing" in early.json()["error"]["message"]
    for n in range(half + 1, len(parts) + 1):
        assert put(n, parts[n - 1]).status_code == 200
    done = http.post(f"/api/v1/uploads/{upload_id}/complete", headers=auth).json()
    assert done["status"] == "complete" and done["missing"] == []

    other = {"Authorization": f"Bearer {app.state.services.accounts.create_key('mallory')}"}
    stolen = http.post("/v1/models", json={"model_name": "x", "model_source": upload_id}, headers=other)
    assert stolen.status_code == 400 and stolen.json()["error"]["code"] == "invalid_source"
    resp = http.post("/v1/models", json={"model_name": "resumed", "model_source": upload_id}, headers=auth)
    assert resp.status_code == 200 and resp.json()["data"]["model_source"] == "upload"
    run_all_jobs(app.state.services)
    assert http.get(f"/v1/jobs/{resp.json()['data']['job_id']}", headers=auth).json()["status"] == "Complete"


def test_uploads_are_listed_newest_first_and_deleted_with_their_files(
    client: tuple[TestClient, dict[str, str]], app: Any, tiny_llama: Path
) -> None:
    http, auth = client
    other = {"Authorization": f"Bearer {app.state.services.accounts.create_key('mallory')}"}
    half = http.post(
        "/api/v1/uploads", json={"filename": "half.tar", "bytes": 8192, "part_size": 4096}, headers=auth
    ).json()
    assert http.put(f"/api/v1/uploads/{half['id']}/parts/1", content=b"x" * 4096, headers=auth).status_code == 200
    tar = archive_bytes(files_of(tiny_llama), "tar")
    whole = http.post("/v0/models/upload", files={"file": ("m.tar", tar)}, headers=auth).json()
    theirs = http.post("/api/v1/uploads", json={"filename": "t.tar", "bytes": 10}, headers=other).json()

    listed = http.get("/api/v1/uploads", headers=auth).json()
    assert listed["object"] == "list" and [u["id"] for u in listed["data"]] == [whole["id"], half["id"]]
    newest, oldest = listed["data"]
    assert newest["status"] == "complete" and newest["bytes"] == len(tar) and newest["filename"] == "m.tar"
    assert (oldest["status"], oldest["received"], oldest["missing"]) == ("receiving", [1], [2])
    assert oldest == http.get(f"/api/v1/uploads/{half['id']}", headers=auth).json()  # one shape

    # While a job reads an upload, it stays; once the job is done, it can go.
    resp = http.post("/v1/models", json={"model_name": "m", "model_source": whole["id"]}, headers=auth)
    assert resp.status_code == 200, resp.text
    held = http.delete(f"/api/v1/uploads/{whole['id']}", headers=auth)
    assert held.status_code == 409 and resp.json()["data"]["job_id"] in held.json()["error"]["message"]
    run_all_jobs(app.state.services)
    for upload in (whole, half):
        assert http.delete(f"/api/v1/uploads/{upload['id']}", headers=auth).status_code == 204
        assert not (app.state.services.settings.uploads_dir / upload["id"]).exists()  # the bytes are gone
        assert http.get(f"/api/v1/uploads/{upload['id']}", headers=auth).status_code == 404
    assert http.get("/api/v1/uploads", headers=auth).json()["data"] == []
    assert [u["id"] for u in http.get("/api/v1/uploads", headers=other).json()["data"]] == [theirs["id"]]
    assert {p.parent.name for p in uploads_left(app)} == {theirs["id"]}
