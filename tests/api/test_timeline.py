"""``GET /api/v1/timeline``: a model's or endpoint's last hour on this server, to its own account only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.serving.observe import Kind, Outcome, Served
from modelport.settings import Settings
from tests.api.test_keys_api import bearer, first_account
from tests.api.test_together_api import assert_envelope


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_workers=False)) as c:
        yield c


def test_an_account_reads_its_own_timelines_and_an_administrator_any(client: TestClient) -> None:
    admin = first_account(client)
    bob = bearer(client.post("/api/v1/keys", json={"account": "bob"}, headers=admin).json()["key"])
    timeline = client.app.state.services.live.timeline  # type: ignore[attr-defined]
    timeline.first_token("bob/chat", 0.05)
    timeline.finished(Served("acct", "bob/chat", Kind.TEXT, "torch", 7, 30, Outcome.OK, 0.5))
    got = client.get("/api/v1/timeline", params={"model": "bob/chat", "minutes": 5}, headers=bob)
    assert got.status_code == 200
    points = got.json()["points"]
    assert len(points) == 30 and got.json()["bucket_s"] == 10
    assert (points[-1]["requests"], points[-1]["tokens_per_s"], points[-1]["ttft_ms_p50"]) == (1, 3.0, 50.0)
    assert client.get("/api/v1/timeline", params={"model": "bob/chat"}, headers=admin).json()["points"][-1]["requests"]
    # Another account's name does not exist for bob, whether it has traffic or not.
    timeline.finished(Served("acct", "root/secret", Kind.TEXT, "torch", 7, 30, Outcome.OK, 0.5))
    assert_envelope(client.get("/api/v1/timeline", params={"model": "root/secret"}, headers=bob), 404, "not_found")
    too_far = client.get("/api/v1/timeline", params={"model": "bob/chat", "minutes": 61}, headers=bob)
    assert_envelope(too_far, 422)
    assert client.get("/api/v1/timeline", params={"model": "bob/chat"}).status_code == 401
