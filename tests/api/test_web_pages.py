"""The console's sessions and forms: HttpOnly cookie, CSRF on every change, no open redirects, and one
account never sees another's pages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.settings import Settings
from modelport.web.session import SESSION_COOKIE, csrf_token
from tests.api.test_together_api import assert_envelope
from tests.integration.helpers import run_all_jobs
from tests.support.tinymodels import archive_bytes, files_of


@pytest.fixture
def app_and_keys(settings: Settings) -> Iterator[tuple[TestClient, str, str]]:
    app = create_app(settings, run_workers=False)
    with TestClient(app, follow_redirects=False) as c:
        alice = app.state.accounts.create_key("alice")
        bob = app.state.accounts.create_key("bob")
        yield c, alice, bob


def signed_in(client: TestClient, key: str) -> TestClient:
    client.cookies.set(SESSION_COOKIE, key)
    return client


def test_pages_need_a_session_and_sign_in_sets_a_strict_httponly_cookie(
    app_and_keys: tuple[TestClient, str, str],
) -> None:
    client, alice, _ = app_and_keys
    for path in ("/models", "/models/new", "/endpoints", "/playground", "/keys", "/jobs/job-x"):
        resp = client.get(path)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/signin?next=")
    assert client.get("/static/app.css").status_code == 200  # assets need no session
    wrong = client.post("/signin", data={"api_key": "mp-wrong", "next": "/keys"})
    assert wrong.status_code == 401 and "not valid" in wrong.text and SESSION_COOKIE not in wrong.cookies
    ok = client.post("/signin", data={"api_key": alice, "next": "/keys"})
    assert ok.status_code == 303 and ok.headers["location"] == "/keys"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    # An absolute or protocol-relative "next" never leaves the site.
    for target in ("https://evil.example/", "//evil.example/"):
        resp = client.post("/signin", data={"api_key": alice, "next": target})
        assert resp.headers["location"] == "/models"


def test_changes_need_the_sessions_csrf_token(app_and_keys: tuple[TestClient, str, str]) -> None:
    client, alice, bob = app_and_keys
    signed_in(client, alice)
    # Forms: without the token, or with another session's token, nothing happens.
    for token in ("", csrf_token(bob)):
        resp = client.post("/keys", data={"csrf_token": token})
        assert resp.status_code in (400, 403), resp.text
    keys_before = client.get("/api/v1/keys").json()["data"]
    assert len(keys_before) == 1
    made = client.post("/keys", data={"csrf_token": csrf_token(alice)})
    assert made.status_code == 200 and "mp-" in made.text
    # The JSON API with the cookie: reading is fine, changing needs the X-CSRF-Token header.
    assert client.get("/v1/models").status_code == 200
    body = {"model_name": "m", "model_source": "org/m"}
    assert_envelope(client.post("/v1/models", json=body), 403, "permission_denied")
    headers = {"X-CSRF-Token": csrf_token(alice)}
    assert client.post("/v1/models", json=body, headers=headers).status_code == 200
    # A bearer key needs no CSRF token: it is not sent by browsers on their own.
    client.cookies.clear()
    auth = {"Authorization": f"Bearer {alice}"}
    assert client.post("/v1/models", json={**body, "model_name": "m2"}, headers=auth).status_code == 200


def test_one_account_never_sees_anothers_pages(
    app_and_keys: tuple[TestClient, str, str], settings: Settings, presign: object, tiny_llama: Path
) -> None:
    client, alice, bob = app_and_keys
    url = presign(archive_bytes(files_of(tiny_llama), "tar.gz"))  # type: ignore[operator]
    auth = {"Authorization": f"Bearer {alice}"}
    job_id = client.post("/v1/models", json={"model_name": "secret", "model_source": url}, headers=auth).json()["data"][
        "job_id"
    ]
    run_all_jobs(client.app.state.services)  # type: ignore[attr-defined]
    signed_in(client, alice)
    assert "alice/secret" in client.get("/models").text
    assert client.get("/models/alice/secret").status_code == 200
    assert client.get(f"/jobs/{job_id}").status_code == 200
    client.cookies.clear()
    signed_in(client, bob)
    assert "alice/secret" not in client.get("/models").text
    for path in ("/models/alice/secret", f"/jobs/{job_id}"):
        resp = client.get(path)
        assert resp.status_code == 404 and "Not found" in resp.text
    resp = client.post("/models/alice/secret/delete", data={"csrf_token": csrf_token(bob)})
    assert resp.status_code == 404
    assert "alice/secret" in {m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]}
