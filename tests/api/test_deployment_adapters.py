"""Together 3.x's LoRA adapters attached to a deployment (``E/deployments/{d}/adapters[/{a}]``).

``acme/chat`` has revisions 1 and 2; ``lora-a`` has a revision made on each, ``lora-b`` and ``lora-c``
one made on revision 1. Deployments are rows (the supervisor is not running), with two adapter slots
each. Requests through an attached adapter: ``tests/e2e/test_together_v2_endpoints.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.accounts.service import Principal
from modelport.app import create_app
from modelport.endpoints.hardware import GIB
from modelport.endpoints.service import EndpointSpec
from modelport.endpoints.states import EndpointState, move
from modelport.endpoints.supervisor import Replica
from modelport.ids import deployment_id_of_wire, wire_deployment_id, wire_model_id
from modelport.services import Services
from modelport.serving.ipc import EngineClient
from modelport.storage.db.tables import DeploymentAdapter, Endpoint, Route, utcnow
from tests.api.conftest import Served
from tests.conftest import database, make_settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of, make_llama, make_lora

pytestmark = pytest.mark.db_agnostic

P = "/v2/projects/null/endpoints"


@dataclass
class Api:
    served: Served
    services: Services
    who: Principal
    revisions: dict[str, list[str]]  # model -> its revision ids, oldest first

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: str) -> Any:
        return self.served.client.request(method, P + path, json=body, params=params, headers=self.served.headers)

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None, **params: str) -> Any:
        resp = self.call(method, path, body, **params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def deployment(self, endpoint: str, label: str, model: str, state: str = EndpointState.STOPPED) -> str:
        """``/{endpoint}/deployments/{dep_…}/adapters``, for a new deployment of ``model``."""
        routes = self.services.live.routes
        found = routes.listed(self.who, endpoint)
        route: Route = found[0] if found else routes.create(self.who, endpoint)
        spec = EndpointSpec(model=model, hardware="1x_cpu_2gb", state=state, label=label)
        deployment = routes.create_deployment(self.who, routes.get(self.who, route.id), spec)
        assert deployment is not None
        return f"/{route.id}/deployments/{wire_deployment_id(deployment.id)}/adapters"

    def model_id(self, name: str) -> str:
        return wire_model_id(self.services.catalog.get_model(self.who, name).id)


def _add_revision(served: Served, hub: FakeHub, model: str, files: dict[str, bytes]) -> None:
    hub.add(f"acme/{model}-next", files)
    resp = served.post(f"/api/v1/models/{model}/revisions", {"model_source": f"acme/{model}-next"})
    assert resp.status_code == 202, resp.text
    run_all_jobs(served.client.app.state.services)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("deployment-adapters")
    with database(tmp) as url:
        settings = make_settings(
            tmp, url, hub.url, endpoint_memory_bytes=8 * GIB, quota_endpoint_share=1.0, endpoint_adapter_slots=2
        )
        app = create_app(settings, run_workers=False, supervise=False)
        with TestClient(app) as client:
            services: Services = app.state.services
            key = services.accounts.create_key("acme")
            served = Served(client, {"Authorization": f"Bearer {key}"}, key)
            base = make_llama(tmp / "chat", seed=1)
            served.upload(hub, "chat-dad", files_of(base))
            for i, name in enumerate(("lora-a", "lora-b", "lora-c")):
                lora = files_of(make_lora(tmp / name, base, seed=10 + i))
                served.upload(hub, name, lora, model_type="adapter", base_model="acme/chat-dad")
            _add_revision(served, hub, "chat-dad", files_of(make_llama(tmp / "chat-2", seed=2)))
            _add_revision(served, hub, "lora-a", files_of(make_lora(tmp / "lora-a-2", base, seed=20)))
            who = services.accounts.authenticate(key)
            revisions = {
                m: [r.id for r in sorted(services.catalog.revisions(who, m), key=lambda r: r.number)]
                for m in ("chat-dad", "lora-a", "lora-b")
            }
            assert len(revisions["chat-dad"]) == 2 and len(revisions["lora-a"]) == 2, revisions
            yield Api(served, services, who, revisions)


def error(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    return str(resp.json()["error"]["message"])


def test_an_adapter_attaches_to_a_deployment_of_the_base_revision_it_was_made_on(api: Api) -> None:
    adapters = api.deployment("dad-attach", "new", "chat-dad", state=EndpointState.STARTED)  # revision 2
    attached = api.ok("POST", adapters, {"adapterModelId": api.model_id("lora-a")})
    assert attached["id"].startswith("dad_") and attached["adapterModelId"] == api.model_id("lora-a")
    assert attached["desiredRevisionId"] == api.revisions["lora-a"][1]  # its head, made on revision 2
    assert set(attached) == {
        "id",
        "adapterModelId",
        "desiredRevisionId",
        "etag",
        "createdAt",
        "updatedAt",
        "perCluster",
    }
    # Hardware is reserved but no replica is up (no supervisor here): loading, 0 of 1 pods.
    assert attached["perCluster"] == [
        {"clusterId": "local", "state": "ADAPTER_LOAD_STATE_LOADING", "readyPodCount": 0, "totalPodCount": 1}
    ]
    assert api.ok("GET", f"{adapters}/{attached['id']}") == attached
    assert [a["id"] for a in api.ok("GET", adapters)["data"]] == [attached["id"]]

    # lora-b was made on revision 1: its deltas mean nothing on revision 2's weights.
    message = error(api.call("POST", adapters, {"adapterModelId": "lora-b"}), 400)
    assert api.revisions["chat-dad"][0] in message and api.revisions["chat-dad"][1] in message
    assert "validated against base revision" in message
    assert "already attached" in error(api.call("POST", adapters, {"adapterModelId": "acme/lora-a"}), 409)
    assert "not an adapter" in error(api.call("POST", adapters, {"adapterModelId": "chat-dad"}), 400)
    assert api.call("POST", adapters, {"adapterModelId": "nope"}).status_code == 404
    other = {"Authorization": f"Bearer {api.services.accounts.create_key('mallory')}"}
    assert api.served.client.get(P + adapters, headers=other).status_code == 404
    events = [e.type for e in api.services.live.events.list(adapters.split("/")[1])]
    assert "adapter.attached" in events


def test_an_attachment_changes_revision_and_detaches_with_its_etag(api: Api) -> None:
    adapters = api.deployment("dad-revise", "old", "chat-dad@1")
    first = api.revisions["lora-a"][0]
    attached = api.ok("POST", adapters, {"adapterModelId": "lora-a", "adapterRevisionId": first})
    assert attached["desiredRevisionId"] == first
    assert attached["perCluster"][0] == {
        "clusterId": "local",
        "state": "ADAPTER_LOAD_STATE_PENDING",  # the deployment is stopped: it loads once it runs
        "readyPodCount": 0,
        "totalPodCount": 0,
    }
    path = f"{adapters}/{attached['id']}"
    second = api.revisions["lora-a"][1]  # made on revision 2, and this deployment serves revision 1
    assert "validated against base revision" in error(
        api.call("PATCH", path, {"adapterRevisionId": second, "etag": attached["etag"]}), 400
    )
    assert "etag is required" in error(api.call("PATCH", path, {"adapterRevisionId": first}), 400)
    same = api.ok("PATCH", path, {"adapterRevisionId": "1", "etag": attached["etag"]})  # a number names one too
    assert same["desiredRevisionId"] == first and same["etag"] != attached["etag"]
    assert "stale" in error(api.call("PATCH", path, {"adapterRevisionId": first, "etag": attached["etag"]}), 409)
    assert "stale" in error(api.call("DELETE", path, etag=attached["etag"]), 409)
    assert api.ok("DELETE", path, etag=same["etag"]) == {}
    assert api.call("GET", path).status_code == 404
    assert api.ok("GET", adapters)["data"] == []


def test_a_full_deployment_refuses_an_adapter_unless_forced_to_evict_the_least_recently_used(api: Api) -> None:
    adapters = api.deployment("dad-slots", "old", "chat-dad@1")
    a = api.ok("POST", adapters, {"adapterModelId": "lora-a", "adapterRevisionId": api.revisions["lora-a"][0]})
    b = api.ok("POST", adapters, {"adapterModelId": "lora-b"})
    # lora-a served a request after lora-b was attached (routing stamps last_used_at): lora-b is the oldest.
    with api.services.db.session() as s:
        row = s.get(DeploymentAdapter, a["id"])
        assert row is not None
        row.last_used_at = utcnow() + timedelta(seconds=5)

    full = api.call("POST", adapters, {"adapterModelId": "lora-c"})
    message = error(full, 409)
    assert "all of its 2 slots" in message and "MODELPORT_ENDPOINT_ADAPTER_SLOTS" in message and "force" in message
    assert full.headers["x-should-retry"] == "false"
    assert {x["id"] for x in api.ok("GET", adapters)["data"]} == {a["id"], b["id"]}

    c = api.ok("POST", adapters, {"adapterModelId": "lora-c", "force": True})
    assert {x["id"] for x in api.ok("GET", adapters)["data"]} == {a["id"], c["id"]}
    [evicted] = [e for e in api.services.live.events.list(adapters.split("/")[1]) if e.type == "adapter.evicted"]
    assert evicted.level == "LEVEL_WARN" and "acme/lora-b" in evicted.message and "acme/lora-c" in evicted.message


class _Running:
    """A replica handle that runs and never ends (``placement.ReplicaHandle``)."""

    name, where = "r", "pid 0"

    def poll(self) -> None:
        return None

    def stop(self) -> None:
        pass


def test_a_request_for_an_attached_adapter_goes_to_its_deployment(api: Api, tmp_path: Path) -> None:
    """Routing reads, then writes the attachment's last use in a transaction of its own (SQLite once waited
    out its lock here, a write inside a write)."""
    adapters = api.deployment("dad-route", "serving", "chat-dad", state=EndpointState.STARTED)
    attached = api.ok("POST", adapters, {"adapterModelId": api.model_id("lora-a")})
    deployment_id = deployment_id_of_wire(adapters.split("/")[3])
    supervisor = api.services.live.supervisor
    with api.services.db.session() as s:
        move(s.get(Endpoint, deployment_id), EndpointState.STARTED)  # as the supervisor leaves it
        before = s.get(DeploymentAdapter, attached["id"]).last_used_at
    replica = Replica(deployment_id, 0, _Running(), ready=True)  # type: ignore[arg-type]
    replica.engine = EngineClient(tmp_path / "r.sock", "torch", "test replica")
    supervisor.replicas[deployment_id] = [replica]
    try:
        base, adapter = api.services.catalog.serving_target(api.who, "lora-a")
        assert adapter is not None
        routed = api.services.live.routing.for_model(base.id, base.revision_id, adapter.id)
    finally:
        supervisor.replicas.pop(deployment_id)
    assert routed is not None and routed.deployment == wire_deployment_id(deployment_id)
    assert routed.adapter_revision_id == attached["desiredRevisionId"]
    with api.services.db.read() as s:
        assert s.get(DeploymentAdapter, attached["id"]).last_used_at > before
