"""The console's sessions and forms: HttpOnly cookie, CSRF on every change, no open redirects, and one
account never sees another's pages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelport.api.session import SESSION_COOKIE, csrf_token
from modelport.app import create_app
from modelport.endpoints.hardware import GIB
from modelport.settings import Settings
from modelport.web import views
from tests.api.test_together_api import assert_envelope
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of


@pytest.fixture
def app_and_keys(settings: Settings) -> Iterator[tuple[TestClient, str, str]]:
    settings = settings.model_copy(update={"endpoint_memory_bytes": 8 * GIB})
    app = create_app(settings, run_workers=False, supervise=False)
    with TestClient(app, follow_redirects=False) as c:
        alice = app.state.services.accounts.create_key("alice")
        bob = app.state.services.accounts.create_key("bob")
        yield c, alice, bob


def signed_in(client: TestClient, key: str) -> str:
    """Sign in through the form, as a browser on this site does; returns the session's CSRF token."""
    client.cookies.clear()
    resp = client.post("/signin", data={"api_key": key}, headers={"Origin": str(client.base_url)})
    assert resp.status_code == 303, resp.text
    return csrf_token(client.cookies[SESSION_COOKIE])


def other_session_csrf(client: TestClient, key: str) -> str:
    """The CSRF token of another browser's session (signed in with ``key``)."""
    return csrf_token(client.app.state.services.accounts.open_session(key))  # type: ignore[attr-defined]


def test_pages_need_a_session_and_sign_in_sets_a_strict_httponly_cookie(
    app_and_keys: tuple[TestClient, str, str],
) -> None:
    client, alice, _ = app_and_keys
    for path in ("/models", "/models/new", "/endpoints", "/playground", "/uploads", "/keys", "/jobs/job-x"):
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
    csrf = signed_in(client, alice)
    # Forms: without the token, or with another session's token (even the same key's), nothing happens.
    for token in ("", other_session_csrf(client, bob), other_session_csrf(client, alice), csrf_token(alice)):
        resp = client.post("/keys", data={"csrf_token": token})
        assert resp.status_code in (400, 403), resp.text
    keys_before = client.get("/api/v1/keys").json()["data"]
    assert len(keys_before) == 1
    made = client.post("/keys", data={"csrf_token": csrf})
    assert made.status_code == 200 and "mp-" in made.text
    # The JSON API with the cookie: reading is fine, changing needs the X-CSRF-Token header.
    assert client.get("/v1/models").status_code == 200
    body = {"model_name": "m", "model_source": "org/m"}
    assert_envelope(client.post("/v1/models", json=body), 403, "permission_denied")
    headers = {"X-CSRF-Token": csrf}
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
    bobs = signed_in(client, bob)
    assert "alice/secret" not in client.get("/models").text
    for path in ("/models/alice/secret", f"/jobs/{job_id}"):
        resp = client.get(path)
        assert resp.status_code == 404 and "Not found" in resp.text
    resp = client.post("/models/alice/secret/delete", data={"csrf_token": bobs})
    assert resp.status_code == 404
    assert "alice/secret" in {m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]}


def slot(html: str, field: str) -> str:
    """The text of a field's error slot on the Add custom model page ("" while hidden)."""
    found = re.search(rf'<p class="[^"]*" id="{field}-error" role="alert" (hidden)?>([^<]*)</p>', html)
    assert found, f"no error slot for {field}"
    return "" if found.group(1) else found.group(2)


def test_add_model_form_shows_a_refusal_next_to_its_field_in_the_pages_words(
    app_and_keys: tuple[TestClient, str, str],
) -> None:
    client, alice, _ = app_and_keys
    form = {
        "csrf_token": signed_in(client, alice),
        "model_name": "dup",
        "source_kind": "huggingface",
        "hf_repo": "org/m",
    }
    assert client.post("/models/new", data=form).status_code == 303
    resp = client.post("/models/new", data=form | {"hf_token": "hf_secret_value"})
    assert resp.status_code == 409
    html = resp.text
    said = slot(html, "model_name")
    assert said.startswith("You already have a model named “dup”") and said.endswith("Choose another Name."), said
    assert 'aria-describedby="name-help model_name-error" aria-invalid="true"' in html
    assert slot(html, "form") == ""  # nothing at the top: it is the Name's problem
    assert "hf_secret_value" not in html
    # An unknown base lands next to Base model; a missing source next to Source.
    adapter = form | {"model_name": "lora", "model_type": "adapter", "base_model": "alice/nope"}
    said = slot(client.post("/models/new", data=adapter).text, "base_model")
    assert said.startswith("“alice/nope” is not one of your ready models. Choose another Base model")
    html = client.post("/models/new", data=form | {"model_name": "other", "hf_repo": ""}).text
    assert slot(html, "source") == "choose a Hugging Face repo to upload from"
    # The page's script gets the same words, to explain a refusal of the preflight the same way.
    words = re.search(r'<script type="application/json" id="form-words">(.*?)</script>', html, re.S)
    assert words and json.loads(words.group(1)) == views.form_words()


def test_uploads_page_lists_only_your_uploads_and_deletes_them(
    app_and_keys: tuple[TestClient, str, str], tiny_llama: Path
) -> None:
    client, alice, bob = app_and_keys
    auth = {"Authorization": f"Bearer {alice}"}
    half = client.post("/api/v1/uploads", json={"filename": "half.tar", "bytes": 10}, headers=auth).json()
    tar = archive_bytes(files_of(tiny_llama), "tar")
    whole = client.post("/v0/models/upload", files={"file": ("whole.tar", tar)}, headers=auth).json()
    theirs = client.post(
        "/api/v1/uploads", json={"filename": "bobs.tar", "bytes": 10}, headers={"Authorization": f"Bearer {bob}"}
    ).json()
    csrf = signed_in(client, alice)
    html = client.get("/uploads").text
    assert 'href="/uploads" aria-current="page"' in html
    assert "half.tar" in html and "whole.tar" in html and "bobs.tar" not in html
    assert html.index("whole.tar") < html.index("half.tar")  # newest first
    assert "unfinished" in html and "complete" in html and "0 of 1 parts" in html
    # Deleting needs the session's CSRF token, and another account's upload is not found.
    bobs = other_session_csrf(client, bob)
    assert client.post(f"/uploads/{half['id']}/delete", data={"csrf_token": bobs}).status_code == 403
    resp = client.post(f"/uploads/{theirs['id']}/delete", data={"csrf_token": csrf})
    assert resp.status_code == 404
    # An upload a job still reads stays, and the page says why.
    body = {"model_name": "m", "model_source": whole["id"]}
    job_id = client.post("/v1/models", json=body, headers=auth).json()["data"]["job_id"]
    resp = client.post(f"/uploads/{whole['id']}/delete", data={"csrf_token": csrf})
    assert resp.status_code == 409 and job_id in resp.text and 'role="alert"' in resp.text
    run_all_jobs(client.app.state.services)  # type: ignore[attr-defined]
    for upload in (half, whole):
        resp = client.post(f"/uploads/{upload['id']}/delete", data={"csrf_token": csrf})
        assert resp.status_code == 303 and resp.headers["location"] == "/uploads"
    assert "No uploads." in client.get("/uploads").text
    uploads_dir = client.app.state.services.settings.uploads_dir  # type: ignore[attr-defined]
    assert sorted(p.name for p in uploads_dir.iterdir()) == [theirs["id"]]


def test_endpoint_messages_name_the_consoles_way_not_a_cli(
    app_and_keys: tuple[TestClient, str, str], hub: FakeHub, tiny_llama: Path
) -> None:
    client, alice, _ = app_and_keys
    auth = {"Authorization": f"Bearer {alice}"}
    hub.add("web/ep", files_of(tiny_llama))
    client.post("/v1/models", json={"model_name": "ep", "model_source": "web/ep"}, headers=auth)
    run_all_jobs(client.app.state.services)  # type: ignore[attr-defined]
    made = client.post("/v1/endpoints", json={"model": "alice/ep", "hardware": "1x_cpu_2gb"}, headers=auth)
    assert made.status_code == 200, made.text
    client.patch(f"/v1/endpoints/{made.json()['id']}", json={"state": "STOPPED"}, headers=auth)
    chat = {"model": made.json()["name"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    refused = client.post("/v1/chat/completions", json=chat, headers=auth)
    assert refused.json()["error"]["code"] == "endpoint_not_running"
    signed_in(client, alice)
    for text in (refused.text, client.get("/endpoints").text, client.get("/playground").text):
        assert "together" not in text.lower()
    script = client.get("/static/app.js").text
    assert 'err.code === "endpoint_not_running"' in script and "Start it on the Endpoints page" in script
