"""Together 3.1.1's model commands against a live server (``shared/WIRE-v2.md`` §4-6): create a model,
upload a folder in parallel 20 MiB parts by signed URLs, upload it again (every file skipped, the same
revision), list revisions and files, chat with the result, download it byte for byte (plain and as a
Hugging Face snapshot), import a revision from the hub with its events, and keep tenants apart."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Live, server_env
from tests.support.fakehub import FakeHub
from tests.support.procs import start_modelport
from tests.support.tinymodels import archive_bytes, files_of, make_llama, make_lora

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

V3 = "3.1.1"
KEY = "mp-e2e-bootstrap-key-0123456789abcdef"


def sha256s(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def tg(live: Live, *args: str, project: str) -> Any:
    run = live.together(V3, *args, "--project", project, "--json", base_url=live.url, program="tg")
    return json.loads(run.stdout)


def sdk(live: Live, project: str, body: str) -> Any:
    code = (
        f"import json\nfrom together import Together\nclient = Together(max_retries=0, project_id={project!r})\n{body}"
    )
    return live.sdk(V3, code, base_url=live.url)


def wait_revision(live: Live, project: str, model_id: str, revision: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = live.get(f"/v2/projects/{project}/models/{model_id}/revisions")["data"]
        found = next(r for r in listed if r["revisionId"] == revision)
        if found["validationStatus"] != "REVISION_VALIDATION_STATUS_PENDING":
            return dict(found)
        time.sleep(0.3)
    raise TimeoutError(revision)


def test_models_upload_revisions_chat_and_download_with_the_3x_cli_and_sdk(
    live: Live, hub: FakeHub, tmp_path: Path
) -> None:
    project = live.get("/v3/whoami")["project"]["id"]
    # A folder of several files, one (the weights, ~42 MiB) larger than two 20 MiB parts.
    folder = make_llama(tmp_path / "mine", seed=5, hidden=512, layers=4, heads=8, kv_heads=8, intermediate=1024)
    assert (folder / "model.safetensors").stat().st_size > 2 * 20 * 2**20

    created = tg(live, "models", "create", "--name", "mine", "--base-model", "ml_" + "0" * 32, project=project)
    assert created["name"] == "devuser/mine" and created["id"].startswith("ml_")
    model_id = created["id"]

    first = tg(live, "models", "upload", model_id, str(folder), project=project)["revisionId"]
    assert wait_revision(live, project, model_id, first)["validationStatus"] == "REVISION_VALIDATION_STATUS_SUCCESS"
    # Again: every file is already stored, so no part is sent and the revision is the same one.
    assert tg(live, "models", "upload", model_id, str(folder), project=project)["revisionId"] == first

    listed = sdk(
        live,
        project,
        f"""
revisions = client.models.list_revisions({model_id!r})
files = client.models.list_files({model_id!r})
model = client.models.retrieve({model_id!r})
chat = client.chat.completions.create(
    model=model.name, messages=[{{"role": "user", "content": "the cat"}}], max_tokens=3, temperature=0
)
print(json.dumps({{
    "revisions": [[r.revision_id, r.validation_status] for r in revisions.data],
    "files": {{f.path: [f.size_bytes, f.hash] for f in files.data}},
    "revision": files.revision_id,
    "name": model.name,
    "weights": model.weights.type,
    "tokens": chat.usage.completion_tokens,
}}))
""",
    )
    assert listed["revisions"] == [[first, "REVISION_VALIDATION_STATUS_SUCCESS"]]
    assert listed["revision"] == first and listed["name"] == "devuser/mine"
    assert listed["weights"] == "WEIGHTS_TYPE_DEFAULT" and listed["tokens"] == 3
    sizes = {path: int(size) for path, (size, _) in listed["files"].items()}
    assert sizes == {path: (folder / path).stat().st_size for path in sha256s(folder)}
    assert listed["files"]["model.safetensors"][1].endswith("-3")  # an S3 multipart ETag of 3 parts

    plain = tmp_path / "download"
    got = tg(live, "models", "download", model_id, str(plain), project=project)
    assert got["revisionId"] == first and sha256s(plain) == sha256s(folder)
    hf = tmp_path / "hf"
    tg(live, "models", "download", "devuser/mine", str(hf), "--format", "hf", project=project)
    [snapshot] = hf.glob("models--*/snapshots/*")
    assert snapshot.name == first and sha256s(snapshot) == sha256s(folder)

    # An adapter on it: `--base-model` by name goes through /v2/supported-models, as the CLI resolves it.
    lora = make_lora(tmp_path / "lora", folder, seed=8)
    adapter = tg(
        live, "models", "create", "--name", "mine-lora", "--base-model", "devuser/mine", "--type", "adapter",
        project=project,
    )  # fmt: skip
    assert adapter["weights"]["type"] == "WEIGHTS_TYPE_ADAPTER" and adapter["baseModelId"] == model_id
    lora_revision = tg(live, "models", "upload", adapter["id"], str(lora), project=project)["revisionId"]
    assert wait_revision(live, project, adapter["id"], lora_revision)["validationStatus"].endswith("SUCCESS")
    chat = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={"model": "devuser/mine-lora", "messages": [{"role": "user", "content": "the"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {live.key}"},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text

    # A second revision, imported from the hub, with its events; the newest ready revision then serves.
    hub.add("acme/mine-v2", files_of(make_llama(tmp_path / "v2", seed=6)))
    remote = sdk(
        live,
        project,
        f"""
up = client.models.remote_uploads.create(model_id={model_id!r}, remote_url="https://huggingface.co/acme/mine-v2")
print(json.dumps({{"id": up.id, "status": up.status}}))
""",
    )
    assert remote["status"] in ("REMOTE_UPLOAD_STATUS_PENDING", "REMOTE_UPLOAD_STATUS_RUNNING")
    assert live.wait_job(remote["id"])["status"] == "Complete"
    events = live.get(f"/v2/projects/{project}/models/uploads/{remote['id']}/events")["data"]
    assert [e["type"] for e in events][-1] == "Complete" and any(e["type"] == "validating" for e in events)
    upload = live.get(f"/v2/projects/{project}/models/uploads/{remote['id']}")
    assert upload["status"] == "REMOTE_UPLOAD_STATUS_SUCCEEDED" and upload["remoteUrl"] == "acme/mine-v2"
    revisions = tg(live, "models", "ls-revisions", model_id, project=project)
    assert len(revisions["data"] if isinstance(revisions, dict) else revisions) == 2
    assert live.get(f"/v2/projects/{project}/models/{model_id}")["revisionId"] == upload["revisionId"]


def test_signed_urls_and_projects_belong_to_their_owner(live: Live, tmp_path: Path) -> None:
    project = live.get("/v3/whoami")["project"]["id"]
    headers = {"Authorization": f"Bearer {live.key}"}
    created = httpx.post(
        f"{live.url}/v2/projects/{project}/models", json={"name": "small", "type": "model"}, headers=headers
    ).json()
    plan = httpx.post(
        f"{live.url}/v2/projects/{project}/models/upload/create",
        json={"objectId": created["id"], "files": [{"path": "config.json", "hash": "0" * 32, "numParts": 1}]},
        headers=headers,
    ).json()
    url = plan["files"][0]["parts"][0]["url"]
    assert "signature=" in url and live.key not in url
    tampered = url.replace("/parts/", "/parts/x").replace("signature=", "signature=A")
    assert httpx.put(tampered, content=b"{}").status_code in (401, 404)
    assert httpx.put(url.replace("signature=", "signature=A"), content=b"{}").status_code == 401
    resp = httpx.put(url, content=b"{}")
    assert resp.status_code == 200 and resp.headers["etag"] == f'"{hashlib.md5(b"{}").hexdigest()}"'
    # Another project's routes are missing, not forbidden; so is the upload under another key.
    assert httpx.get(f"{live.url}/v2/projects/proj-other/models", headers=headers).status_code == 404
    assert httpx.get(f"{live.url}/v2/projects/null/models", headers=headers).status_code == 200


def test_with_an_s3_blob_store_parts_and_downloads_go_straight_to_the_bucket(
    tmp_path: Path, db_url: str, hub: FakeHub, s3_server: str, s3: Any, bucket: str
) -> None:
    env = server_env(
        tmp_path,
        db_url,
        hub,
        KEY,
        MODELPORT_BLOB_URL=f"s3://{bucket}/blobs",
        MODELPORT_S3_ENDPOINT_URL=s3_server,
        MODELPORT_S3_ACCESS_KEY_ID="testing",
        MODELPORT_S3_SECRET_ACCESS_KEY="testing",
    )
    proc, url = start_modelport(env, tmp_path / "server.log")
    live = Live(url, KEY, proc, env)
    try:
        project = live.get("/v3/whoami")["project"]["id"]
        folder = make_llama(tmp_path / "big", seed=7, hidden=384, layers=4, heads=6, kv_heads=6, intermediate=1024)
        assert (folder / "model.safetensors").stat().st_size > 20 * 2**20  # two parts, the first signed at 20 MiB
        model_id = tg(live, "models", "create", "--name", "big", "--base-model", "ml_" + "0" * 32, project=project)[
            "id"
        ]
        first = tg(live, "models", "upload", model_id, str(folder), project=project)["revisionId"]
        assert wait_revision(live, project, model_id, first)["validationStatus"] == "REVISION_VALIDATION_STATUS_SUCCESS"
        # No byte of any part reached this server's disk: the bucket had them all.
        assert not list((tmp_path / "data" / "multipart").glob("upload-*/*.part"))
        assert tg(live, "models", "upload", model_id, str(folder), project=project)["revisionId"] == first

        plan = httpx.post(
            f"{url}/v2/projects/{project}/models/download",
            json={"objectId": model_id, "paths": ["model.safetensors"]},
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()
        assert plan["files"][0]["parts"][0]["url"].startswith(s3_server)  # a presigned URL of the bucket
        got = tmp_path / "download"
        tg(live, "models", "download", model_id, str(got), project=project)
        assert sha256s(got) == sha256s(folder)

        # A remote upload from a presigned archive URL: its events, then a second revision.
        s3.put_object(
            Bucket=bucket, Key="small.tar.gz", Body=archive_bytes(files_of(make_llama(tmp_path / "s")), "tar.gz")
        )
        presigned = s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "small.tar.gz"}, ExpiresIn=7200
        )
        remote = sdk(
            live,
            project,
            f"up = client.models.remote_uploads.create(model_id={model_id!r}, remote_url={presigned!r})\n"
            "print(json.dumps({'id': up.id, 'url': up.remote_url}))",
        )
        assert "Signature" not in remote["url"] and "small.tar.gz" in remote["url"]  # shown without its signature
        assert live.wait_job(remote["id"])["status"] == "Complete"
        events = live.get(f"/v2/projects/{project}/models/uploads/{remote['id']}/events")["data"]
        assert {"downloading", "extracting", "validating", "Complete"} <= {e["type"] for e in events}
        assert len(live.get(f"/v2/projects/{project}/models/{model_id}/revisions")["data"]) == 2
    finally:
        proc.stop()
