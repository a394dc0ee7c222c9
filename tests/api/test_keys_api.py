"""``/api/v1/keys``: an account manages its own keys, the administrator any account's; keys shown once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.settings import Settings
from tests.api.test_together_api import assert_envelope


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_workers=False)) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def first_account(client: TestClient) -> dict[str, str]:
    """What a new install does: the first account, made into an empty database, administers."""
    key = "mp-first-account-key-0123456789abcdef"
    assert client.app.state.services.accounts.bootstrap("root", key)  # type: ignore[attr-defined]
    return bearer(key)


def test_first_account_administers_and_others_manage_their_own(client: TestClient) -> None:
    admin = first_account(client)
    made = client.post("/api/v1/keys", json={"account": "bob"}, headers=admin)
    assert made.status_code == 201 and made.json()["account"] == "bob" and made.json()["key"].startswith("mp-")
    bob = bearer(made.json()["key"])
    # Listing never shows a key again, only its id and first characters.
    listed = client.get("/api/v1/keys", headers=bob).json()["data"]
    assert [k["id"] for k in listed] == [made.json()["id"]] and "key" not in listed[0]
    assert listed[0]["hint"] == made.json()["key"][:7] + "…" and listed[0]["status"] == "active"
    # bob cannot act for others: 403 to create, and other accounts' keys do not exist for him.
    assert_envelope(client.post("/api/v1/keys", json={"account": "carol"}, headers=bob), 403, "permission_denied")
    admin_key_id = next(
        k["id"] for k in client.get("/api/v1/keys", headers=admin).json()["data"] if k["account"] != "bob"
    )
    assert_envelope(client.delete(f"/api/v1/keys/{admin_key_id}", headers=bob), 404, "not_found")
    assert client.get("/api/v1/keys", params={"account": "admin"}, headers=bob).json()["data"] == []
    # His own: a second key, then revoking the first one locks it out at once.
    second = bearer(client.post("/api/v1/keys", json={}, headers=bob).json()["key"])
    assert client.delete(f"/api/v1/keys/{made.json()['id']}", headers=second).status_code == 204
    assert_envelope(client.get("/v1/whoami", headers=bob), 401, "invalid_api_key")
    assert client.get("/v1/whoami", headers=second).json()["organization"]["name"] == "bob"
    accounts = {k["account"] for k in client.get("/api/v1/keys", headers=admin).json()["data"]}
    assert accounts == {"root", "bob"}


def test_new_account_names_are_checked(client: TestClient) -> None:
    admin = first_account(client)
    error = assert_envelope(client.post("/api/v1/keys", json={"account": "../etc"}, headers=admin), 400)
    assert "account names" in error["message"]
