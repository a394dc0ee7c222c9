"""The Together dialect's contract: shapes, status codes and the error envelope on every failure."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from tests.integration.helpers import run_all_jobs
from tests.support.tinymodels import archive_bytes, files_of

TOGETHER_UA = {"User-Agent": "Together/v1 PythonBindings/1.5.35"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, run_workers=False)
    with TestClient(app) as c:
        yield c


def key_for(client: TestClient, account: str) -> dict[str, str]:
    key = client.app.state.services.accounts.create_key(account)  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {key}"}


def assert_envelope(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if code:
        assert body["error"]["code"] == code
    return dict(body["error"])


def test_keys_are_stored_hashed(client: TestClient, settings: Settings) -> None:
    key = client.app.state.services.accounts.create_key("hashed")  # type: ignore[attr-defined]
    from sqlalchemy import text

    with client.app.state.services.db.engine.connect() as conn:  # type: ignore[attr-defined]
        assert key not in str(conn.execute(text("SELECT * FROM api_keys")).fetchall())


def test_whoami_answers_on_v1_and_v3(client: TestClient) -> None:
    auth = key_for(client, "carol")
    for path in ("/v1/whoami", "/v3/whoami"):
        body = client.get(path, headers=auth).json()
        assert body["type"] == "project_api_key" and body["organization"]["name"] == "carol"
        assert body["api_key"]["id"].startswith("key-") and body["project"]["slug"] == "carol"


def test_upload_answer_has_the_together_shape(client: TestClient, presign: Any, tiny_llama: Path) -> None:
    auth = key_for(client, "alice")
    url = presign(archive_bytes(files_of(tiny_llama), "tar.gz"))
    resp = client.post(
        "/v1/models",
        headers=auth,
        json={"model_name": "tiny", "model_source": url, "allow_unsupported": True},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["message"] == "job created"
    data = body["data"]
    assert data["model_name"] == "alice/tiny" and data["model_source"] == "remote_archive"
    assert data["job_id"].startswith("job-") and data["model_id"].startswith("model-")
    job = client.get(f"/v1/jobs/{data['job_id']}", headers=auth).json()
    assert job["status"] == "Queued" and job["type"] == "model_upload"
    assert job["args"]["modelName"] == "alice/tiny"
    assert "Signature" not in str(job) and "X-Amz-Credential" not in str(job)
    run_all_jobs(client.app.state.services)  # type: ignore[attr-defined]
    job = client.get(f"/v1/jobs/{data['job_id']}", headers=auth).json()
    assert job["status"] == "Complete"
    assert all({"status", "message", "timestamp"} == set(u) for u in job["status_updates"])
    listed = client.get("/v1/jobs", headers=auth).json()
    assert [j["job_id"] for j in listed["data"]] == [data["job_id"]]


def test_model_list_is_bare_for_together_and_a_list_object_for_others(
    client: TestClient, presign: Any, tiny_llama: Path
) -> None:
    auth = key_for(client, "alice")
    client.post(
        "/v1/models",
        headers=auth,
        json={"model_name": "tiny", "model_source": presign(archive_bytes(files_of(tiny_llama), "tar"))},
    )
    run_all_jobs(client.app.state.services)  # type: ignore[attr-defined]
    bare = client.get("/v1/models", headers=auth | TOGETHER_UA).json()
    assert isinstance(bare, list) and bare[0]["id"] == "alice/tiny"
    item = bare[0]
    assert item["object"] == "model" and item["type"] == "chat" and item["context_length"] == 128
    assert set(item["pricing"]) == {"base", "finetune", "hourly", "input", "output"}
    wrapped = client.get("/v1/models", headers=auth | {"User-Agent": "OpenAI/Python 3.1.0"}).json()
    assert wrapped["object"] == "list" and wrapped["data"] == bare
    # The openai SDK percent-encodes the slash of namespaced ids.
    detail = client.get("/v1/models/alice%2Ftiny", headers=auth).json()
    assert detail["id"] == "alice/tiny" and detail["manifest"]["architecture"] == "LlamaForCausalLM"
    assert client.get(f"/v1/models/{detail['model_id']}", headers=auth).json()["id"] == "alice/tiny"


def test_other_accounts_see_404_not_403(client: TestClient, presign: Any, tiny_llama: Path) -> None:
    alice, mallory = key_for(client, "alice"), key_for(client, "mallory")
    data = client.post(
        "/v1/models",
        headers=alice,
        json={"model_name": "secret", "model_source": presign(archive_bytes(files_of(tiny_llama), "tar"))},
    ).json()["data"]
    run_all_jobs(client.app.state.services)  # type: ignore[attr-defined]
    assert_envelope(client.get(f"/v1/jobs/{data['job_id']}", headers=mallory), 404, "not_found")
    assert_envelope(client.get("/v1/models/alice/secret", headers=mallory), 404, "not_found")
    assert_envelope(client.get(f"/v1/models/{data['model_id']}", headers=mallory), 404, "not_found")
    assert_envelope(client.delete("/v1/models/alice/secret", headers=mallory), 404, "not_found")
    assert client.get("/v1/models", headers=mallory | TOGETHER_UA).json() == []
    assert client.get("/v1/jobs", headers=mallory).json()["data"] == []
    # Nor can mallory create a model in alice's namespace.
    err = assert_envelope(
        client.post("/v1/models", headers=mallory, json={"model_name": "alice/x", "model_source": "org/repo"}),
        400,
        "invalid_model_name",
    )
    assert "namespace" in err["message"]


def test_duplicate_name_is_409(client: TestClient) -> None:
    auth = key_for(client, "alice")
    body = {"model_name": "dup", "model_source": "org/repo"}
    assert client.post("/v1/models", headers=auth, json=body).status_code == 200
    err = assert_envelope(client.post("/v1/models", headers=auth, json=body), 409, "model_name_taken")
    assert "Model name already exists" in err["message"] and err["param"] == "model_name"
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 1  # the refusal made no job


def test_an_unknown_base_is_refused_before_a_job_exists(client: TestClient) -> None:
    auth = key_for(client, "alice")
    body = {"model_name": "lora", "model_source": "org/lora", "model_type": "adapter", "base_model": "org/base"}
    err = assert_envelope(client.post("/v1/models", headers=auth, json=body), 400, "base_model_not_found")
    assert err["param"] == "base_model" and "upload the base model first" in err["message"]
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []
    assert client.get("/v1/models", headers=auth).json()["data"] == []


def test_concurrent_duplicates_exactly_one_wins(client: TestClient) -> None:
    auth = key_for(client, "alice")
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        statuses.append(
            client.post("/v1/models", headers=auth, json={"model_name": "race", "model_source": "org/repo"}).status_code
        )

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [409] * 7


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model_source": "org/repo"}, 422, "invalid_request", "model_name"),
        (
            {"model_name": "x", "model_source": "org/repo", "model_type": "lora"},
            422,
            "invalid_request",
            "model_type",
        ),
        ({"model_name": "../etc", "model_source": "org/repo"}, 400, "invalid_model_name", "model_name"),
        ({"model_name": "x", "model_source": "ftp://host/m.zip"}, 400, "invalid_source", "model_source"),
        ({"model_name": "x", "model_source": "not a source"}, 400, "invalid_source", "model_source"),
    ],
)
def test_bad_input_gets_a_clear_error(
    client: TestClient, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    err = assert_envelope(client.post("/v1/models", headers=key_for(client, "alice"), json=body), status, code)
    assert err["param"] == param


def test_presigned_url_expiring_soon_is_refused_at_submission(client: TestClient, presign: Any) -> None:
    url = presign(b"whatever", expires=30 * 60)
    err = assert_envelope(
        client.post("/v1/models", headers=key_for(client, "alice"), json={"model_name": "x", "model_source": url}),
        400,
        "presigned_url_expiring",
    )
    assert "100 minutes" in err["message"] and "Signature" not in err["message"]
    assert client.get("/v1/jobs", headers=key_for(client, "bob")).json()["data"] == []


def test_unknown_routes_and_methods_use_the_envelope(client: TestClient) -> None:
    auth = key_for(client, "alice")
    assert_envelope(client.get("/v1/nothing-here", headers=auth), 404)
    assert_envelope(client.put("/v1/jobs", headers=auth), 405)
    assert_envelope(client.get("/v1/jobs/job-unknown", headers=auth), 404, "not_found")


def test_an_unreachable_database_is_a_clear_503_with_retry_after(client: TestClient) -> None:
    auth = key_for(client, "alice")
    db = client.app.state.services.db  # type: ignore[attr-defined]
    working = db.engine, db._sessions, db._reads
    # A real refused connection: nothing listens on port 1.
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")
    db.engine, db._sessions, db._reads = down.engine, down._sessions, down._reads
    # As a real server answers: the handler's response, not the exception re-raised into the test.
    served = TestClient(client.app, raise_server_exceptions=False)
    try:
        resp = served.get("/v1/models", headers=auth)
        err = assert_envelope(resp, 503, "database_unavailable")
        assert "try again" in err["message"] and resp.headers["retry-after"] == "2"
        nebius = served.get("/v0/models", headers=auth)
        assert nebius.status_code == 503 and "database" in nebius.json()["detail"]
    finally:
        db.engine, db._sessions, db._reads = working
        down.dispose()
    assert client.get("/v1/models", headers=auth).status_code == 200


@pytest.mark.db_agnostic
def test_a_models_context_length_is_the_one_it_is_served_with() -> None:
    from datetime import UTC, datetime

    from modelport.api.together.convert import model_item
    from modelport.manifest import DEFAULT_CONTEXT_LENGTH, Manifest, ModelKind
    from modelport.storage.db.tables import Model

    def item(context: int | None, cap: int) -> int | None:
        manifest = Manifest(kind=ModelKind.MODEL, context_length=context)
        model = Model(name="acme/m", kind="model", manifest=manifest, created_at=datetime.now(UTC), total_bytes=1)
        return model_item(model, None, cap).context_length

    assert item(131072, 4096) == 4096  # a config may declare far more than the server serves
    assert item(128, 4096) == 128
    assert item(None, 4096) == DEFAULT_CONTEXT_LENGTH


def test_one_base_url_serves_every_client_generation(client: TestClient) -> None:
    """3.x sends versioned paths: given a 2.x-style base ending in /v1 they arrive as /v1/v3/..., /v1/v1/..."""
    auth = key_for(client, "acme")
    me = client.get("/v3/whoami", headers=auth).json()
    assert client.get("/v1/v3/whoami", headers=auth).json() == me
    assert client.get("/v1/v1/models", headers=auth).json() == client.get("/v1/models", headers=auth).json()
    projects = client.get("/v1/v1/projects", headers=auth).json()
    assert projects == {
        "object": "list",
        "data": [
            {
                "id": me["project"]["id"],
                "name": "acme",
                "slug": "acme",
                "organization_id": me["organization"]["id"],
                "organization_name": "acme",
            }
        ],
        "next_cursor": None,
    }
    assert_envelope(client.get("/v1/v4/whoami", headers=auth), 404)  # only the known generations
    assert_envelope(client.get("/v1/projects"), 401)
