"""``/api/v1/keys``: an account manages its own keys, the administrator any account's; keys shown once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from modelport.app import create_app
from modelport.settings import Settings
from modelport.storage.db.tables import ApiKey, utcnow
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


def test_keys_have_names_and_a_last_used_date_written_at_most_once_a_minute(client: TestClient) -> None:
    admin = first_account(client)
    made = client.post("/api/v1/keys", json={"name": "  ci runner  "}, headers=admin)
    assert made.status_code == 201 and made.json()["name"] == "ci runner" and made.json()["last_used_at"] is None

    def listed() -> dict[str, Any]:
        return next(k for k in client.get("/api/v1/keys", headers=admin).json()["data"] if k["id"] == made.json()["id"])

    assert listed()["last_used_at"] is None  # listing with another key is not a use of this one
    assert client.get("/v1/whoami", headers=bearer(made.json()["key"])).status_code == 200
    first_use = listed()["last_used_at"]
    assert abs(first_use - time.time()) < 60
    # Used again within the minute: no write (the date says "to the minute", the database is spared).
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as s:
        s.execute(
            update(ApiKey).where(ApiKey.id == made.json()["id"]).values(last_used_at=utcnow() - timedelta(seconds=30))
        )
    client.get("/v1/whoami", headers=bearer(made.json()["key"]))
    assert first_use - listed()["last_used_at"] >= 29
    with services.db.session() as s:
        s.execute(
            update(ApiKey).where(ApiKey.id == made.json()["id"]).values(last_used_at=utcnow() - timedelta(minutes=5))
        )
    client.get("/v1/whoami", headers=bearer(made.json()["key"]))
    assert abs(listed()["last_used_at"] - time.time()) < 60


@pytest.mark.parametrize("name", ["x" * 101, "tab\there", "nul\x00"])
def test_a_key_name_is_short_and_printable(client: TestClient, name: str) -> None:
    admin = first_account(client)
    error = assert_envelope(client.post("/api/v1/keys", json={"name": name}, headers=admin), 400)
    assert error["param"] == "name"
    assert len(client.get("/api/v1/keys", headers=admin).json()["data"]) == 1  # nothing made
