"""Per-account quotas: a clear 429 (with Retry-After where waiting helps), never a 500, nothing left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from modelport.accounts.quotas import RateLimiter
from modelport.app import create_app
from modelport.errors import RateLimited
from modelport.settings import Settings
from modelport.storage.db.tables import Account, Job, Model
from tests.api.test_together_api import assert_envelope
from tests.integration.helpers import run_all_jobs, stored_blobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of


def make_client(settings: Settings, **quotas: int) -> Any:
    app = create_app(settings.model_copy(update=quotas), run_workers=False)
    return TestClient(app)


@pytest.fixture
def repo(hub: FakeHub, tiny_llama: Path) -> str:
    hub.add("q/tiny", files_of(tiny_llama))
    return "q/tiny"


def auth(client: TestClient, account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app.state.services.accounts.create_key(account)}"}  # type: ignore[attr-defined]


def submit(client: TestClient, headers: dict[str, str], name: str, source: str) -> Any:
    return client.post("/v1/models", json={"model_name": name, "model_source": source}, headers=headers)


def rows(client: TestClient, headers: dict[str, str]) -> tuple[int, int]:
    """The account's model rows (any status) and jobs, straight from the database."""
    account = client.get("/v1/whoami", headers=headers).json()["organization"]["name"]
    with client.app.state.services.db.session() as s:  # type: ignore[attr-defined]
        account_id = s.scalar(select(Account.id).where(Account.name == account))
        models = s.scalar(select(func.count()).select_from(Model).where(Model.account_id == account_id))
        jobs = s.scalar(select(func.count()).select_from(Job).where(Job.account_id == account_id))
    return int(models or 0), int(jobs or 0)


def test_model_count_quota(settings: Settings, repo: str) -> None:
    with make_client(settings, quota_models=1) as c:
        alice, bob = auth(c, "alice"), auth(c, "bob")
        assert submit(c, alice, "one", repo).status_code == 200
        resp = submit(c, alice, "two", repo)
        err = assert_envelope(resp, 429, "quota_exceeded")
        assert "limit is 1" in err["message"] and "delete one" in err["message"]
        assert "retry-after" not in resp.headers  # waiting does not help; deleting does
        assert rows(c, alice) == (1, 1)
        assert submit(c, bob, "one", repo).status_code == 200  # per account
        nebius = c.post("/v0/models", json={"name": "three", "source": repo}, headers=alice)
        assert nebius.status_code == 429 and "limit is 1" in nebius.json()["detail"]
        run_all_jobs(c.app.state.services)  # type: ignore[attr-defined]
        assert c.delete("/v1/models/alice/one", headers=alice).status_code == 200
        assert submit(c, alice, "two", repo).status_code == 200


def test_active_jobs_quota_says_when_to_retry(settings: Settings, repo: str) -> None:
    with make_client(settings, quota_active_jobs=2) as c:
        alice = auth(c, "alice")
        assert [submit(c, alice, n, repo).status_code for n in ("a", "b")] == [200, 200]
        resp = submit(c, alice, "c", repo)
        assert_envelope(resp, 429, "quota_exceeded")
        assert int(resp.headers["retry-after"]) > 0
        assert rows(c, alice) == (2, 2)
        run_all_jobs(c.app.state.services)  # type: ignore[attr-defined]
        assert submit(c, alice, "c", repo).status_code == 200


def test_storage_quota_fails_the_job_that_would_pass_it_and_then_refuses_uploads(
    settings: Settings, repo: str, tiny_llama: Path
) -> None:
    size = sum(len(b) for b in files_of(tiny_llama).values())
    with make_client(settings, quota_stored_bytes=size + size // 2) as c:
        alice = auth(c, "alice")
        services = c.app.state.services  # type: ignore[attr-defined]
        first = submit(c, alice, "first", repo).json()["data"]
        run_all_jobs(services)
        assert c.get(f"/v1/jobs/{first['job_id']}", headers=alice).json()["status"] == "Complete"
        blobs = stored_blobs(services)
        second = submit(c, alice, "second", repo).json()["data"]  # under quota until it is unpacked
        run_all_jobs(services)
        job = c.get(f"/v1/jobs/{second['job_id']}", headers=alice).json()
        assert job["status"] == "Failed", job
        assert job["error"]["code"] == "quota_exceeded" and "past its storage quota" in job["error"]["message"]
        assert rows(c, alice) == (1, 2) and stored_blobs(services) == blobs  # nothing of the second kept
    with make_client(settings, quota_stored_bytes=size) as c:
        alice2 = auth(c, "alice2")
        submit(c, alice2, "fills", repo)
        run_all_jobs(c.app.state.services)  # type: ignore[attr-defined]
        err = assert_envelope(submit(c, alice2, "more", repo), 429, "quota_exceeded")
        assert "storage quota" in err["message"]


def test_inference_rate_limit_is_per_account_with_retry_after(settings: Settings) -> None:
    with make_client(settings, quota_requests_per_minute=3) as c:
        alice, bob = auth(c, "alice"), auth(c, "bob")
        body = {"model": "alice/none", "prompt": "a", "max_tokens": 1}
        # Refused calls count too: probing for names is not free.
        assert [c.post("/v1/completions", json=body, headers=alice).status_code for _ in range(3)] == [404] * 3
        resp = c.post(
            "/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}, headers=alice
        )
        err = assert_envelope(resp, 429, "rate_limit_exceeded")
        assert 1 <= int(resp.headers["retry-after"]) <= 20 and "3 inference requests per minute" in err["message"]
        assert c.post("/v1/embeddings", json={"model": "x", "input": "a"}, headers=alice).status_code == 429
        assert c.post("/v1/completions", json=body, headers=bob).status_code == 404  # bob has his own bucket


def test_rate_limiter_refills_continuously() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one token a second, bursts of 60
    for _ in range(60):
        limiter.take("a")
    with pytest.raises(RateLimited) as caught:
        limiter.take("a")
    assert caught.value.retry_after == 1
    now[0] += 1.0
    limiter.take("a")
    now[0] += 3600
    for _ in range(60):  # refilled to the burst size, not beyond
        limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")
    RateLimiter(0).take("a")  # 0: no limit
