"""Together v2's direct upload and download, by what they refuse: signed URLs that are tampered with,
parts that are missing, too long or not what the client says, paths out of the model folder, another
account's sessions, models and stored files; and what they promise: one revision per upload, failed
checks kept as the revision's validation errors, ranges served exactly."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.ingest import etags
from tests.api.conftest import Served
from tests.conftest import database, make_settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of, make_llama

pytestmark = pytest.mark.db_agnostic


class Project:
    def __init__(self, served: Served, key: str) -> None:
        self.client, self.headers = served.client, {"Authorization": f"Bearer {key}"}
        self.id = self.client.get("/v3/whoami", headers=self.headers).json()["project"]["id"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.request(method, f"/v2/projects/{self.id}{path}", json=body, headers=self.headers)

    def create(self, name: str) -> str:
        resp = self.call("POST", "/models", {"name": name, "type": "model"})
        assert resp.status_code == 200, resp.text
        model_id: str = resp.json()["id"]
        return model_id

    def plan(self, model: str, files: dict[str, bytes]) -> dict[str, Any]:
        listing = [{"path": p, "hash": etag_of(b), "numParts": etags.parts_of(len(b))} for p, b in files.items()]
        resp = self.call("POST", "/models/upload/create", {"objectId": model, "files": listing})
        assert resp.status_code == 200, resp.text
        return {f["path"]: f for f in resp.json()["files"]}

    def send(self, model: str, files: dict[str, bytes]) -> Any:
        """The whole protocol, as the client runs it; returns complete's response."""
        done = []
        for path, f in self.plan(model, files).items():
            if f["skipUpload"]:
                done.append({"path": path, "hash": etag_of(files[path]), "skipUpload": True})
                continue
            parts = []
            for part in f["parts"]:
                n = part["partNumber"]
                chunk = files[path][(n - 1) * etags.PART_BYTES : n * etags.PART_BYTES]
                put = self.client.put(part["url"], content=chunk)
                assert put.status_code == 200, put.text
                parts.append({"partNumber": n, "hash": put.headers["etag"].strip('"')})
            details = {"uploadId": f["uploadId"], "parts": parts}
            done.append({"path": path, "hash": etag_of(files[path]), "uploadDetails": details})
        return self.call("POST", "/models/upload/complete", {"objectId": model, "files": done})


def etag_of(data: bytes) -> str:
    parts = [data[i : i + etags.PART_BYTES] for i in range(0, max(len(data), 1), etags.PART_BYTES)]
    return etags.combine(hashlib.md5(p).hexdigest() for p in parts)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("v2uploads")
    with database(tmp) as url:
        app = create_app(make_settings(tmp, url, hub.url), run_workers=False)
        with TestClient(app) as client:
            key = app.state.services.accounts.create_key("acme")
            yield Served(client, {"Authorization": f"Bearer {key}"}, key)


@pytest.fixture(scope="module")
def acme(served: Served) -> Project:
    return Project(served, served.key)


@pytest.fixture(scope="module")
def rival(served: Served) -> Project:
    return Project(served, served.client.app.state.services.accounts.create_key("rival"))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return files_of(make_llama(tmp_path_factory.mktemp("m") / "m"))


def test_an_upload_makes_one_revision_that_serves_once_checked(
    acme: Project, served: Served, model_files: dict[str, bytes]
) -> None:
    model = acme.create("direct")
    resp = acme.send(model, model_files)
    assert resp.status_code == 200, resp.text
    revision = resp.json()["revisionId"]
    [pending] = acme.call("GET", f"/models/{model}/revisions").json()["data"]
    assert (pending["revisionId"], pending["validationStatus"]) == (revision, "REVISION_VALIDATION_STATUS_PENDING")
    run_all_jobs(served.client.app.state.services)  # type: ignore[attr-defined]
    [ready] = acme.call("GET", f"/models/{model}/revisions").json()["data"]
    assert ready["validationStatus"] == "REVISION_VALIDATION_STATUS_SUCCESS"
    files = acme.call("GET", f"/models/{model}/files").json()
    assert {f["path"]: f["hash"] for f in files["data"]} == {p: etag_of(b) for p, b in model_files.items()}
    assert files["totalSizeBytes"] == str(sum(map(len, model_files.values())))
    # The same files again: all skipped, and the answer is the revision that already holds them.
    assert all(f["skipUpload"] for f in acme.plan(model, model_files).values())
    assert acme.send(model, model_files).json()["revisionId"] == revision
    body = {"model": "acme/direct", "prompt": "the cat", "max_tokens": 2}
    assert served.post("/v1/completions", body).status_code == 200


def test_a_revision_that_fails_its_checks_keeps_the_reasons(acme: Project, served: Served) -> None:
    model = acme.create("broken")
    resp = acme.send(model, {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x00" * 64})
    assert resp.status_code == 200
    run_all_jobs(served.client.app.state.services)  # type: ignore[attr-defined]
    [failed] = acme.call("GET", f"/models/{model}/revisions").json()["data"]
    assert failed["validationStatus"] == "REVISION_VALIDATION_STATUS_FAILED"
    assert failed["validationErrors"] and all(e["message"] for e in failed["validationErrors"])
    assert acme.call("GET", f"/models/{model}").json()["name"] == "acme/broken"  # the model stays, empty
    assert acme.call("GET", f"/models/{model}/files").status_code == 404


def test_parts_must_be_whole_signed_and_what_the_client_says(acme: Project, model_files: dict[str, bytes]) -> None:
    model = acme.create("parts")
    config = model_files["config.json"] + b"\n"  # bytes acme does not store yet, so they are not skipped
    [f] = acme.plan(model, {"config.json": config}).values()
    url: str = f["parts"][0]["url"]
    assert acme.client.put(url.replace("signature=", "signature=x"), content=config).status_code == 401
    assert acme.client.put(url.replace("expires=", "expires=1"), content=config).status_code == 401
    other_part = url.replace(f"/{f['uploadId']}/1?", f"/{f['uploadId']}/2?")
    assert acme.client.put(other_part, content=config).status_code == 401  # signed for part 1 only
    too_long = acme.client.put(url, content=b"\x00" * (etags.PART_BYTES + 1))
    assert too_long.status_code == 413

    def complete(parts: list[dict[str, Any]], file_hash: str = etag_of(config)) -> Any:
        details = {"uploadId": f["uploadId"], "parts": parts}
        body = {"objectId": model, "files": [{"path": "config.json", "hash": file_hash, "uploadDetails": details}]}
        return acme.call("POST", "/models/upload/complete", body)

    missing = complete([{"partNumber": 1, "hash": etag_of(config)}])
    assert missing.status_code == 400 and "never received" in missing.json()["error"]["message"]
    sent = acme.client.put(url, content=config[:-1])  # the client says it sent all of it
    assert sent.status_code == 200
    wrong = complete([{"partNumber": 1, "hash": etag_of(config)}])
    assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]["message"]
    lying = complete([{"partNumber": 1, "hash": sent.headers["etag"]}], file_hash=etag_of(config))
    assert lying.status_code == 400
    assert (
        complete([{"partNumber": 1, "hash": sent.headers["etag"]}], file_hash=etag_of(config[:-1])).status_code == 400
    )


@pytest.mark.parametrize("path", ["../escape.json", "/etc/passwd", ".git/config", "a//b", "a\\b", ""])
def test_paths_stay_inside_the_model_folder(acme: Project, path: str) -> None:
    model = acme.create(f"paths-{hashlib.md5(path.encode()).hexdigest()[:6]}")
    body = {"objectId": model, "files": [{"path": path, "hash": "0" * 32, "numParts": 1}]}
    resp = acme.call("POST", "/models/upload/create", body)
    assert resp.status_code == 400, resp.text


def test_accounts_never_reach_each_others_models_sessions_or_stored_files(
    acme: Project, rival: Project, model_files: dict[str, bytes]
) -> None:
    mine = acme.create("private")
    assert rival.call("GET", f"/models/{mine}").status_code == 404
    listing = {"objectId": mine, "files": [{"path": "config.json", "hash": "0" * 32, "numParts": 1}]}
    assert rival.call("POST", "/models/upload/create", listing).status_code == 404
    assert acme.client.get(f"/v2/projects/{acme.id}/models", headers=rival.headers).status_code == 404
    # acme stores these files (the first test); rival's identical files are not skipped for it.
    theirs = rival.create("copy")
    assert not any(f["skipUpload"] for f in rival.plan(theirs, model_files).values())
    skipped = [{"path": "config.json", "hash": etag_of(model_files["config.json"]), "skipUpload": True}]
    resp = rival.call("POST", "/models/upload/complete", {"objectId": theirs, "files": skipped})
    assert resp.status_code == 400 and "no stored file" in resp.json()["error"]["message"]
    # An upload session of acme's cannot be completed into rival's model.
    config = model_files["config.json"] + b"\n\n"  # not stored yet, so not skipped
    [f] = acme.plan(mine, {"config.json": config}).values()
    put = acme.client.put(f["parts"][0]["url"], content=config)
    details = {"uploadId": f["uploadId"], "parts": [{"partNumber": 1, "hash": put.headers["etag"]}]}
    body = {
        "objectId": theirs,
        "files": [{"path": "config.json", "hash": etag_of(config), "uploadDetails": details}],
    }
    assert rival.call("POST", "/models/upload/complete", body).status_code == 404
    remote = {"modelId": mine, "remoteUrl": "acme/anything"}
    assert rival.call("POST", "/models/uploads", remote).status_code == 404


def test_downloads_serve_exact_ranges_by_signed_url(acme: Project, model_files: dict[str, bytes]) -> None:
    model = acme.create("ranges")
    assert acme.send(model, model_files).status_code == 200
    run_all_jobs(acme.client.app.state.services)  # type: ignore[attr-defined]
    plan = acme.call("POST", "/models/download", {"objectId": f"{model}", "paths": ["config.json"]}).json()
    [f] = plan["files"]
    [part] = f["parts"]
    got = acme.client.get(part["url"], headers=part["headers"])
    assert got.status_code in (200, 206) and got.content == model_files["config.json"]
    url = part["url"]
    middle = acme.client.get(url, headers={"Range": "bytes=2-5"})
    assert middle.status_code == 206 and middle.content == model_files["config.json"][2:6]
    assert middle.headers["content-range"] == f"bytes 2-5/{len(model_files['config.json'])}"
    assert acme.client.get(url, headers={"Range": "bytes=9999999-"}).status_code == 400
    assert acme.client.get(url.replace("signature=", "signature=x")).status_code == 401
    assert acme.client.get(url.replace("config.json", "model.safetensors")).status_code == 401  # signed per file
    missing = acme.call("POST", "/models/download", {"objectId": model, "paths": ["nope.bin"]})
    assert missing.status_code == 404


def test_many_parts_at_once_as_the_client_sends_them(acme: Project, served: Served) -> None:
    """The 3.x client sends up to 16 files and 256 parts at once: every one is stored, and the server
    answers other requests meanwhile."""
    model = acme.create("concurrent")
    files = {f"shard-{i:02d}.bin": bytes([i]) * (256 * 1024 + i) for i in range(48)}
    planned = acme.plan(model, files)

    async def send_all(url: str) -> tuple[list[int], int]:
        async with httpx.AsyncClient(timeout=60) as client:
            puts = [
                client.put(f["parts"][0]["url"].replace("http://testserver", url), content=files[path])
                for path, f in planned.items()
            ]
            health = client.get(f"{url}/health")
            *answers, ok = await asyncio.gather(*puts, health)
        return [a.status_code for a in answers], ok.status_code

    with serve_in_thread(served.client.app) as url:
        statuses, health = asyncio.run(send_all(url))
    assert statuses == [200] * len(files) and health == 200


@pytest.mark.parametrize("path", ["../../escape.txt", "/tmp/absolute.txt", ".hidden/x.txt"])
def test_skipped_files_are_held_to_the_same_paths_as_sent_ones(
    acme: Project, model_files: dict[str, bytes], path: str
) -> None:
    """A file the account already stores, named by a path outside the model folder, is refused at
    completion: the job would otherwise copy the stored bytes there."""
    model = acme.create(f"skip-{hashlib.md5(path.encode()).hexdigest()[:6]}")
    stored = {"path": path, "hash": etag_of(model_files["config.json"]), "skipUpload": True}
    resp = acme.call("POST", "/models/upload/complete", {"objectId": model, "files": [stored]})
    assert resp.status_code == 400 and "inside the model folder" in resp.json()["error"]["message"]
    listing = [{"path": path, "hash": etag_of(model_files["config.json"]), "numParts": 1}]
    assert acme.call("POST", "/models/upload/create", {"objectId": model, "files": listing}).status_code == 400


def test_a_completed_upload_is_closed_and_completing_it_again_answers_the_same_revision(
    acme: Project, model_files: dict[str, bytes]
) -> None:
    model = acme.create("once")
    files = {**model_files, "config.json": model_files["config.json"] + b"\n\n\n"}  # not stored yet
    planned = acme.plan(model, files)
    done = []
    for path, f in planned.items():
        if f["skipUpload"]:
            done.append({"path": path, "hash": etag_of(files[path]), "skipUpload": True})
            continue
        put = acme.client.put(f["parts"][0]["url"], content=files[path])
        details = {"uploadId": f["uploadId"], "parts": [{"partNumber": 1, "hash": put.headers["etag"]}]}
        done.append({"path": path, "hash": etag_of(files[path]), "uploadDetails": details})
    body = {"objectId": model, "files": done}
    first = acme.call("POST", "/models/upload/complete", body).json()["revisionId"]
    assert acme.call("POST", "/models/upload/complete", body).json()["revisionId"] == first  # a client's retry
    assert len(acme.call("GET", f"/models/{model}/revisions").json()["data"]) == 1
    config = planned["config.json"]
    late = acme.client.put(config["parts"][0]["url"], content=b"{}")
    assert late.status_code == 409 and late.headers["x-should-retry"] == "false"


def test_open_uploads_count_against_the_storage_quota(served: Served, hub: FakeHub, tmp_path: Path) -> None:
    with database(tmp_path) as url:
        settings = make_settings(tmp_path, url, hub.url, quota_stored_bytes=30 * 2**20)
        app = create_app(settings, run_workers=False)
        with TestClient(app) as client:
            key = app.state.services.accounts.create_key("small")
            small = Project(Served(client, {"Authorization": f"Bearer {key}"}, key), key)
            model = small.create("big")
            big = [{"path": "model.safetensors", "hash": "0" * 32 + "-2", "numParts": 2}]  # 20 MiB and more
            assert small.call("POST", "/models/upload/create", {"objectId": model, "files": big}).status_code == 200
            again = [{"path": "other.safetensors", "hash": "1" * 32 + "-1", "numParts": 1}]
            resp = small.call("POST", "/models/upload/create", {"objectId": model, "files": again})
            assert resp.status_code == 200  # 20 MiB + 1 byte declared so far: still under 30 MiB
            third = [{"path": "third.safetensors", "hash": "2" * 32 + "-2", "numParts": 2}]
            resp = small.call("POST", "/models/upload/create", {"objectId": model, "files": third})
            assert resp.status_code == 422 and resp.json()["error"]["code"] == "quota_exceeded"
