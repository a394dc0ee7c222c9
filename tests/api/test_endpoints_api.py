"""The endpoint and hardware routes' contract: shapes, validation, reservations, isolation.

The supervisor is not running here (``supervise=False``), so endpoints stay where the API put them;
replicas are exercised in ``tests/e2e/test_endpoints.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.endpoints.hardware import GIB
from modelport.settings import Settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of


@pytest.fixture
def api(
    settings: Settings, hub: FakeHub, tiny_llama: Path, tiny_lora: Path
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    # One tenant here, so it may take the whole pool; shares between tenants: tests/security/.
    settings = settings.model_copy(update={"endpoint_memory_bytes": 8 * GIB, "quota_endpoint_share": 1.0})
    app = create_app(settings, run_workers=False, supervise=False)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {app.state.services.accounts.create_key('acme')}"}
        hub.add("acme/ep-base", files_of(tiny_llama))
        hub.add("acme/ep-lora", files_of(tiny_lora))
        for body in (
            {"model_name": "base", "model_source": "acme/ep-base"},
            {"model_name": "lora", "model_source": "acme/ep-lora", "model_type": "adapter", "base_model": "base"},
        ):
            assert client.post("/v1/models", json=body, headers=headers).status_code == 200
            run_all_jobs(app.state.services)
        yield client, headers


def error(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.json()
    return str(resp.json()["error"]["message"])


def test_hardware_lists_this_hosts_cpu_configurations_with_availability(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    plain = client.get("/v1/hardware", headers=headers).json()
    assert plain["object"] == "list" and all("availability" not in h for h in plain["data"])
    rows = client.get("/v1/hardware", params={"model": "acme/base"}, headers=headers).json()["data"]
    by_id = {h["id"]: h for h in rows}
    assert "1x_cpu_8gb" in by_id and by_id["1x_cpu_8gb"]["availability"]["status"] == "available"
    assert set(by_id["1x_cpu_2gb"]) == {"id", "object", "pricing", "specs", "updated_at", "availability"}
    assert by_id["1x_cpu_2gb"]["specs"] == {"gpu_count": 1, "gpu_link": "host", "gpu_memory": 2.0, "gpu_type": "cpu"}


def test_create_reserves_and_refuses_what_does_not_fit(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    first = client.post("/v1/endpoints", json={"model": "base", "hardware": "1x_cpu_8gb"}, headers=headers)
    assert first.status_code == 200, first.text
    endpoint = first.json()
    assert endpoint["object"] == "endpoint" and endpoint["type"] == "dedicated" and endpoint["owner"] == "acme"
    assert endpoint["state"] == "PENDING" and endpoint["model"] == "acme/base"
    assert endpoint["autoscaling"] == {"min_replicas": 1, "max_replicas": 1}
    # The pool (8 GiB) is now reserved: another endpoint must wait, and the hardware API says so.
    message = error(
        client.post("/v1/endpoints", json={"model": "base", "hardware": "1x_cpu_2gb"}, headers=headers),
        400,
        "hardware_unavailable",
    )
    assert "not available now" in message and endpoint["name"] in message
    rows = client.get("/v1/hardware", params={"model": "base"}, headers=headers).json()["data"]
    assert {h["availability"]["status"] for h in rows} == {"unavailable"}
    # A stopped endpoint holds nothing.
    stopped = client.patch(f"/v1/endpoints/{endpoint['id']}", json={"state": "STOPPED"}, headers=headers).json()
    assert stopped["state"] == "STOPPING"
    created_stopped = client.post(
        "/v1/endpoints", json={"model": "base", "hardware": "1x_cpu_2gb", "state": "STOPPED"}, headers=headers
    ).json()
    assert created_stopped["state"] == "STOPPED"


def test_create_errors_are_clear(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    post = lambda body: client.post("/v1/endpoints", json=body, headers=headers)  # noqa: E731
    message = error(post({"model": "base", "hardware": "2x_nvidia_h100_80gb_sxm"}), 400, "hardware_unavailable")
    assert "is not available here" in message and "check the hardware api" in message.lower()
    assert "hardware is required" in error(post({"model": "base"}), 400, "hardware_unavailable")
    assert "adapter" in error(post({"model": "lora", "hardware": "1x_cpu_2gb"}), 400, "invalid_request")
    error(post({"model": "nope", "hardware": "1x_cpu_2gb"}), 404, "not_found")
    bad_scaling = {"model": "base", "hardware": "1x_cpu_2gb", "autoscaling": {"min_replicas": 3, "max_replicas": 1}}
    error(post(bad_scaling), 400, "invalid_request")


def test_endpoints_are_private_and_deletable(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    endpoint = client.post(
        "/v1/endpoints", json={"model": "base", "hardware": "1x_cpu_2gb", "display_name": "mine"}, headers=headers
    ).json()
    assert endpoint["display_name"] == "mine"
    other = {"Authorization": f"Bearer {client.app.state.services.accounts.create_key('mallory')}"}  # type: ignore[attr-defined]
    assert client.get(f"/v1/endpoints/{endpoint['id']}", headers=other).status_code == 404
    assert client.get("/v1/endpoints", headers=other).json()["data"] == []
    renamed = client.patch(f"/v1/endpoints/{endpoint['id']}", json={"display_name": "ours"}, headers=headers).json()
    assert renamed["display_name"] == "ours"
    assert client.get(f"/v1/endpoints/{endpoint['name']}", headers=headers).json()["id"] == endpoint["id"]
    assert client.delete("/v1/models/acme/lora", headers=headers).status_code == 200
    in_use = client.delete("/v1/models/acme/base", headers=headers)
    assert in_use.status_code == 409 and endpoint["name"] in in_use.json()["error"]["message"]
    assert client.delete(f"/v1/endpoints/{endpoint['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/endpoints/{endpoint['id']}", headers=headers).status_code == 404


def test_an_idle_endpoint_stops_after_its_inactive_timeout(api: tuple[TestClient, dict[str, str]]) -> None:
    from datetime import timedelta

    from modelport.storage.db.tables import Endpoint, utcnow

    client, headers = api
    body = {"model": "base", "hardware": "1x_cpu_2gb", "inactive_timeout": 5}
    endpoint = client.post("/v1/endpoints", json=body, headers=headers).json()
    app: Any = client.app
    with app.state.services.db.session() as s:  # as if it had started and then been idle for 6 minutes
        row = s.get(Endpoint, endpoint["id"])
        row.state, row.last_request_at = "STARTED", utcnow() - timedelta(minutes=6)
    app.state.services.live.supervisor.reconcile()
    assert client.get(f"/v1/endpoints/{endpoint['id']}", headers=headers).json()["state"] == "STOPPING"
    app.state.services.live.supervisor.reconcile()
    assert client.get(f"/v1/endpoints/{endpoint['id']}", headers=headers).json()["state"] == "STOPPED"
    with app.state.services.db.session() as s:
        assert s.get(Endpoint, endpoint["id"]).reservation is None
    called = client.post("/v1/completions", json={"model": endpoint["name"], "prompt": "a"}, headers=headers)
    assert called.status_code == 400 and called.json()["error"]["code"] == "endpoint_not_running"
    message = called.json()["error"]["message"]
    assert "STOPPED" in message and "together" not in message  # each interface names its own way to start it


def test_a_replica_that_keeps_crashing_puts_the_endpoint_in_error(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    import os
    import signal
    import time

    client, headers = api
    app: Any = client.app
    supervisor = app.state.services.live.supervisor
    supervisor.settings = supervisor.settings.model_copy(update={"replica_max_restarts": 0})
    endpoint = client.post("/v1/endpoints", json={"model": "base", "hardware": "1x_cpu_2gb"}, headers=headers).json()
    deadline = time.monotonic() + 120
    state = ""
    while state != "STARTED" and time.monotonic() < deadline:
        supervisor.reconcile()  # launches the replica, then sees it load its model
        state = client.get(f"/v1/endpoints/{endpoint['id']}", headers=headers).json()["state"]
        time.sleep(0.2)
    assert state == "STARTED"
    (replica,) = supervisor.replicas[endpoint["id"]]
    os.kill(replica.handle.proc.pid, signal.SIGKILL)
    replica.handle.proc.wait()
    supervisor.reconcile()
    failed = client.get(f"/v1/endpoints/{endpoint['id']}", headers=headers).json()
    assert failed["state"] == "ERROR" and "SIGKILL" in failed["error"], failed
    assert endpoint["id"] not in supervisor.replicas
    # Its hardware is free again, and starting it again is allowed.
    rows = client.get("/v1/hardware", params={"model": "base"}, headers=headers).json()["data"]
    assert {h["availability"]["status"] for h in rows} == {"available"}
    restarted = client.patch(f"/v1/endpoints/{endpoint['id']}", json={"state": "STARTED"}, headers=headers).json()
    assert restarted["state"] == "PENDING" and restarted["error"] is None
    supervisor.stop()
