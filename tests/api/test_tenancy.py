"""Many tenants on one server: every route needs a live key, and no id reaches another account's things.

The route list is read from the app itself, so a route added later is covered (or must be put on the
public allowlist below, with its reason) without anyone remembering to add it here.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from modelport.api.errors import DIALECTS
from modelport.api.session import SESSION_COOKIE, csrf_token
from modelport.app import create_app
from modelport.endpoints.hardware import GIB
from modelport.settings import Settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of

# Reachable without a key, each for a reason: probes, the sign-in form and its assets, and the API's
# own description (shapes only, no tenant data). The home page is the account's dashboard: signed in.
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/static"),
    ("GET", "/signin"),
    ("POST", "/signin"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}


def app_routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path template) the app answers, HEAD aside; mounts count as GET."""
    routes = []
    for route in iter_route_contexts(app.routes):
        methods = sorted(route.methods or {"GET"}) if hasattr(route, "methods") else ["GET"]
        routes += [(m, route.path) for m in methods if m != "HEAD"]
    return sorted(set(routes))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}:]+:path\}", "someone/thing", re.sub(r"\{[^}:]+\}", "1", path))


@pytest.fixture
def app(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, run_workers=False, supervise=False)
    with TestClient(app, follow_redirects=False) as client:
        yield client


def _refused(client: TestClient, method: str, path: str, key: str | None) -> None:
    url = concrete(path)
    if path.startswith(tuple(DIALECTS)):  # an API's, not a page
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        resp = client.request(method, url, headers=headers)
        assert resp.status_code == 401, f"{method} {path} with key {key!r}: {resp.status_code} {resp.text[:200]}"
        body = resp.json()
        assert body.get("detail") if path.startswith("/v0/") else body["error"]["code"] == "invalid_api_key"
        return
    client.cookies.clear()
    if key:
        client.cookies.set(SESSION_COOKIE, key)
    data = {"csrf_token": csrf_token(key)} if key and method == "POST" else None
    resp = client.request(method, url, data=data)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/signin"), (
        f"{method} {path} with key {key!r}: {resp.status_code} {resp.text[:200]}"
    )
    client.cookies.clear()


def test_every_route_refuses_missing_wrong_and_revoked_keys(app: TestClient) -> None:
    accounts = app.app.state.services.accounts  # type: ignore[attr-defined]
    revoked = accounts.create_key("revoked")
    accounts.revoke_key(accounts.list_keys("revoked")[0].id)
    routes = app_routes(app.app)
    guarded = [r for r in routes if r not in PUBLIC]
    assert len(guarded) >= 45, routes  # the enumeration really found the routers
    print(f"{len(guarded)} routes x 3 credentials refused; public: {len(PUBLIC)}")
    assert set(routes) >= PUBLIC, f"stale allowlist entries: {PUBLIC - set(routes)}"
    for method, path in guarded:
        for key in (None, "mp-wrong-key-0123456789abcdef", revoked):
            _refused(app, method, path, key)


def test_the_public_routes_answer_without_a_key(app: TestClient) -> None:
    for method, path in sorted(PUBLIC):
        url = "/static/app.css" if path == "/static" else path
        resp = app.request(method, url, data={"api_key": "nope"} if method == "POST" else None)
        assert resp.status_code in (200, 303, 307, 401), (method, path, resp.status_code)
        assert "mp-" not in resp.text  # no key material on a public page


@dataclass
class Tenants:
    client: TestClient
    alice: dict[str, str]
    mallory: dict[str, str]
    ids: dict[str, str]


@pytest.fixture
def tenants(settings: Settings, hub: FakeHub, tiny_llama: Path, tiny_lora: Path) -> Iterator[Tenants]:
    """alice owns one of everything; mallory owns a model of her own and nothing else."""
    settings = settings.model_copy(update={"endpoint_memory_bytes": 8 * GIB})
    app = create_app(settings, run_workers=False, supervise=False)
    with TestClient(app, follow_redirects=False) as client:
        alice = {"Authorization": f"Bearer {app.state.services.accounts.create_key('alice')}"}
        mallory = {"Authorization": f"Bearer {app.state.services.accounts.create_key('mallory')}"}
        hub.add("t/base", files_of(tiny_llama))
        hub.add("t/lora", files_of(tiny_lora))
        ids: dict[str, str] = {}
        for who, body in (
            (alice, {"model_name": "base", "model_source": "t/base"}),
            (alice, {"model_name": "lora", "model_source": "t/lora", "model_type": "adapter", "base_model": "base"}),
            (mallory, {"model_name": "own", "model_source": "t/base"}),
        ):
            data = client.post("/v1/models", json=body, headers=who).json()["data"]
            ids[body["model_name"]], ids[f"job-{body['model_name']}"] = data["model_id"], data["job_id"]
            run_all_jobs(app.state.services)
        endpoint = client.post(
            "/v1/endpoints", json={"model": "alice/base", "hardware": "1x_cpu_2gb"}, headers=alice
        ).json()
        ids["endpoint"], ids["endpoint-name"] = endpoint["id"], endpoint["name"]
        upload = client.post("/api/v1/uploads", json={"filename": "m.tar", "bytes": 10}, headers=alice).json()
        ids["upload"] = upload["id"]
        tar = archive_bytes(files_of(tiny_llama), "tar")
        ids["file"] = client.post(
            "/v0/models/upload", files={"file": ("m.tar", io.BytesIO(tar))}, headers=alice
        ).json()["id"]
        ids["key"] = client.get("/api/v1/keys", headers=alice).json()["data"][0]["id"]
        yield Tenants(client, alice, mallory, ids)


def test_another_accounts_things_are_404_by_every_id(tenants: Tenants) -> None:
    c, m, ids = tenants.client, tenants.mallory, tenants.ids
    probes = [
        ("GET", f"/v1/models/{ids['base']}"),
        ("GET", "/v1/models/alice/base"),
        ("GET", "/v1/models/alice/lora"),
        ("DELETE", "/v1/models/alice/lora"),
        ("DELETE", f"/v1/models/{ids['base']}"),
        ("GET", f"/v1/jobs/{ids['job-base']}"),
        ("GET", f"/v1/jobs/{ids['job-lora']}/events"),
        ("GET", f"/v1/endpoints/{ids['endpoint']}"),
        ("GET", f"/v1/endpoints/{ids['endpoint-name']}"),
        ("PATCH", f"/v1/endpoints/{ids['endpoint']}"),
        ("DELETE", f"/v1/endpoints/{ids['endpoint']}"),
        ("GET", "/v0/models/alice/base"),
        ("DELETE", "/v0/models/alice/base"),
        ("GET", f"/api/v1/uploads/{ids['upload']}"),
        ("PUT", f"/api/v1/uploads/{ids['upload']}/parts/1"),
        ("POST", f"/api/v1/uploads/{ids['upload']}/complete"),
        ("DELETE", f"/api/v1/uploads/{ids['upload']}"),
        ("DELETE", f"/api/v1/keys/{ids['key']}"),
    ]
    for method, path in probes:
        body = {"state": "STOPPED"} if method == "PATCH" else None
        resp = c.request(method, path, headers=m, json=body, content=b"x" * 10 if method == "PUT" else None)
        assert resp.status_code == 404, f"{method} {path}: {resp.status_code} {resp.text[:200]}"
        assert "alice" not in resp.text.replace("alice/", "") or path.endswith(("alice/base", "alice/lora"))
    # Lists show mallory her own things only.
    assert [x["id"] for x in c.get("/v1/models", headers=m).json()["data"]] == ["mallory/own"]
    assert {j["job_id"] for j in c.get("/v1/jobs", headers=m).json()["data"]} == {ids["job-own"]}
    assert c.get("/v1/endpoints", headers=m).json()["data"] == []
    assert [x["name"] for x in c.get("/v0/models", headers=m).json()["data"]] == ["mallory/own"]
    assert all(k["id"] != ids["key"] for k in c.get("/api/v1/keys", headers=m).json()["data"])
    assert c.get("/api/v1/uploads", headers=m).json()["data"] == []
    # A name is taken per account: hers does not block mallory's, and preflight says so.
    assert c.post("/api/v1/models/preflight", json={"model_name": "base"}, headers=m).status_code == 200
    # And everything of alice's is still there.
    assert c.get(f"/v1/endpoints/{ids['endpoint']}", headers=tenants.alice).status_code == 200
    assert c.get(f"/api/v1/uploads/{ids['upload']}", headers=tenants.alice).status_code == 200
    assert {u["id"] for u in c.get("/api/v1/uploads", headers=tenants.alice).json()["data"]} == {
        ids["upload"],
        ids["file"],
    }


def test_another_accounts_models_cannot_be_used_in_any_way(tenants: Tenants) -> None:
    c, m, ids = tenants.client, tenants.mallory, tenants.ids
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for model in ("alice/base", "alice/lora", ids["base"], tenants.ids["endpoint-name"]):
        resp = c.post("/v1/chat/completions", json={"model": model, **chat}, headers=m)
        assert resp.status_code == 404, (model, resp.text)
        resp = c.post("/v1/completions", json={"model": model, "prompt": "a", "max_tokens": 2}, headers=m)
        assert resp.status_code == 404, (model, resp.text)
    assert c.post("/v1/embeddings", json={"model": "alice/base", "input": "a"}, headers=m).status_code == 404
    # Nor can her models be a base, an endpoint, a source or a hardware query for someone else.
    # A base is resolved at submission, in the caller's own models only: refused before any job exists,
    # by name or id, and the did-you-mean never offers hers.
    for base in ("alice/base", ids["base"], "alice/bas"):
        adapter = {"model_name": "steal", "model_source": "t/lora", "model_type": "adapter", "base_model": base}
        for route in ("/v1/models", "/api/v1/models/preflight"):
            resp = c.post(route, json=adapter, headers=m)
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "base_model_not_found", resp.text
            assert "did you mean" not in resp.text and ids["base"] not in resp.text.replace(repr(base), "")
    assert {j["job_id"] for j in c.get("/v1/jobs", headers=m).json()["data"]} == {ids["job-own"]}
    resp = c.post("/v1/endpoints", json={"model": "alice/base", "hardware": "1x_cpu_2gb"}, headers=m)
    assert resp.status_code == 404, resp.text
    assert c.get("/v1/hardware", params={"model": "alice/base"}, headers=m).status_code == 404
    resp = c.post("/v1/models", json={"model_name": "copy", "model_source": ids["file"]}, headers=m)
    assert resp.status_code == 400 and "not one of your uploads" in resp.text
    assert c.get("/v1/models", headers=m).json()["data"][0]["id"] == "mallory/own"
