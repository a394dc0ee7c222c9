"""Together 3.x's endpoints (``/v2/projects/{p}/endpoints…``): an endpoint over deployments, its traffic
split, etags, events, and v1 endpoints seen as endpoints with one deployment.

The supervisor is not running here (``supervise=False``): deployments stay where the API put them.
Replicas, routing and rollouts end to end: ``tests/e2e/test_together_v2_endpoints.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.endpoints.autoscale import Policy, Pressure, decide, seconds
from modelport.endpoints.events import Events
from modelport.endpoints.hardware import GIB
from modelport.endpoints.states import EndpointState, move
from modelport.endpoints.supervisor import Replica
from modelport.errors import EngineOverloaded
from modelport.ids import deployment_id_of_wire
from modelport.settings import Settings
from modelport.storage.db.tables import Endpoint
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of

P = "/v2/projects/null"


@pytest.fixture
def api(settings: Settings, hub: FakeHub, tiny_llama: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = settings.model_copy(update={"endpoint_memory_bytes": 8 * GIB, "quota_endpoint_share": 1.0})
    app = create_app(settings, run_workers=False, supervise=False)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {app.state.services.accounts.create_key('acme')}"}
        hub.add("acme/v2-base", files_of(tiny_llama))
        resp = client.post("/v1/models", json={"model_name": "base", "model_source": "acme/v2-base"}, headers=headers)
        assert resp.status_code == 200, resp.text
        run_all_jobs(app.state.services)
        yield client, headers


def _deploy(client: TestClient, headers: dict[str, str], endpoint: str, name: str, **extra: Any) -> Any:
    model = client.get(f"{P}/models/acme/base", headers=headers).json()
    body = {
        "name": name,
        "model": f"projects/x/models/{model['id']}",
        "config": "projects/x/configs/cr_1x_cpu_2gb",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        **extra,
    }
    return client.post(f"{P}/endpoints/{endpoint}/deployments", json=body, headers=headers)


def test_an_endpoint_holds_deployments_and_splits_traffic_between_them(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    created = client.post(f"{P}/endpoints", json={"name": "chat"}, headers=headers)
    assert created.status_code == 200, created.text
    ep = created.json()
    assert ep["id"].startswith("ep_") and ep["name"] == "acme/chat" and ep["deployments"] == []
    assert ep["trafficSplit"] == [] and ep["endpointType"] == "ENDPOINT_TYPE_DEDICATED"
    taken = client.post(f"{P}/endpoints", json={"name": "chat"}, headers=headers)
    assert taken.status_code == 409 and taken.headers["x-should-retry"] == "false"
    # The CLI's duplicate check lists by name.
    listed = client.get(f"{P}/endpoints", params={"filter": 'name="chat"'}, headers=headers).json()["data"]
    assert [e["id"] for e in listed] == [ep["id"]]

    model = client.get(f"{P}/models/acme/base", headers=headers).json()
    body = {"name": "blue", "modelId": model["id"], "configId": "cr_1x_cpu_2gb", "autoscaling": {}}
    checked = client.post(
        f"{P}/endpoints/{ep['id']}/deployments", params={"validateOnly": "true"}, json=body, headers=headers
    )
    assert checked.status_code == 200, checked.text
    assert client.get(f"{P}/endpoints/{ep['id']}/deployments", headers=headers).json()["data"] == []
    too_big = body | {"configId": "cr_nope"}
    assert client.post(f"{P}/endpoints/{ep['id']}/deployments", json=too_big, headers=headers).status_code == 400
    blue = _deploy(client, headers, ep["id"], "blue2").json()
    assert blue["id"].startswith("dep_") and blue["name"] == "acme/chat/blue2"
    assert blue["status"]["state"] == "DEPLOYMENT_STATE_PROVISIONING" and blue["configId"] == "cr_1x_cpu_2gb"
    assert blue["model"].endswith(f"/revisions/{blue['modelRevisionId']}")
    green = _deploy(client, headers, ep["id"], "green", maxConcurrentRequestsPerReplica="4").json()
    assert green["maxConcurrentRequestsPerReplica"] == "4"
    assert _deploy(client, headers, ep["id"], "green").status_code == 409

    ep = client.get(f"{P}/endpoints/chat", headers=headers).json()
    # The first live deployment takes the traffic; later ones join at weight 0.
    weights = {t["deploymentId"]: t["weight"] for t in ep["trafficSplit"]}
    assert weights[blue["id"]] == 1.0 and weights[green["id"]] == 0.0
    shares = {d["id"]: d["estimatedEffectiveTrafficShare"] for d in ep["deployments"]}
    assert shares[blue["id"]] == 1.0 and shares[green["id"]] == 0.0

    split = [{"deploymentId": blue["id"], "weight": 3}, {"deploymentId": green["id"], "weight": 1}]
    patched = client.patch(
        f"{P}/endpoints/{ep['id']}",
        params={"updateMask": "trafficSplit"},
        json={"etag": ep["etag"], "trafficSplit": split},
        headers=headers,
    )
    assert patched.status_code == 200, patched.text
    shares = {d["id"]: d["estimatedEffectiveTrafficShare"] for d in patched.json()["deployments"]}
    assert shares == {blue["id"]: 0.75, green["id"]: 0.25}
    stale = client.patch(
        f"{P}/endpoints/{ep['id']}",
        params={"updateMask": "trafficSplit"},
        json={"etag": ep["etag"], "trafficSplit": []},
        headers=headers,
    )
    assert stale.status_code == 409 and stale.headers["x-should-retry"] == "false"
    assert "stale" in stale.json()["error"]["message"]
    bad = client.patch(
        f"{P}/endpoints/{ep['id']}",
        params={"updateMask": "trafficSplit"},
        json={"trafficSplit": [{"deploymentId": "dep_00", "weight": 1}]},
        headers=headers,
    )
    assert bad.status_code == 400


def test_deployments_scale_stop_and_delete_in_order(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    ep = client.post(f"{P}/endpoints", json={"name": "svc"}, headers=headers).json()
    dep = _deploy(client, headers, ep["id"], "one").json()
    # Deleting what still runs is refused, with what to do instead.
    refused = client.delete(f"{P}/endpoints/{ep['id']}/deployments/{dep['id']}", headers=headers)
    assert refused.status_code == 409 and "0/0" in refused.json()["error"]["message"]
    assert client.delete(f"{P}/endpoints/{ep['id']}", headers=headers).status_code == 409
    # ``tg endpoints update`` names the deployment by name; 0/0 stops it.
    scaled = client.patch(
        f"{P}/endpoints/{ep['id']}/deployments/one",
        params={"updateMask": "autoscaling"},
        json={"autoscaling": {"minReplicas": 0, "maxReplicas": 0}, "etag": dep["etag"]},
        headers=headers,
    )
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["status"]["state"] in ("DEPLOYMENT_STATE_STOPPING", "DEPLOYMENT_STATE_STOPPED")
    services = client.app.state.services  # type: ignore[attr-defined]
    services.serving.supervisor.reconcile()
    gone = client.delete(f"{P}/endpoints/{ep['id']}/deployments/{dep['id']}", headers=headers)
    assert gone.status_code == 200 and gone.json() == {}
    assert client.delete(f"{P}/endpoints/{ep['id']}", params={"etag": "stale"}, headers=headers).status_code == 409
    assert client.delete(f"{P}/endpoints/{ep['id']}", headers=headers).json() == {}
    assert client.get(f"{P}/endpoints/{ep['id']}", headers=headers).status_code == 404


def test_events_record_what_happened_and_filter(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    ep = client.post(f"{P}/endpoints", json={"name": "ev"}, headers=headers).json()
    dep = _deploy(client, headers, ep["id"], "one").json()
    events = client.get(f"{P}/endpoints/{ep['id']}/events", headers=headers).json()["data"]
    types = [e["type"] for e in events]
    assert types[0] == "endpoint.created" and "deployment.created" in types
    mine = client.get(f"{P}/endpoints/{ep['id']}/events", params={"deploymentIds": dep["id"]}, headers=headers).json()[
        "data"
    ]
    assert mine and all(e["deploymentId"] == dep["id"] for e in mine)
    assert client.get(f"{P}/endpoints/{ep['id']}/events", params={"minLevel": "LEVEL_WARN"}, headers=headers).json()[
        "data"
    ] == [e for e in events if e["level"] in ("LEVEL_WARN", "LEVEL_ERROR")]


def test_a_v1_endpoint_is_an_endpoint_with_one_deployment(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    v1 = client.post("/v1/endpoints", json={"model": "base", "hardware": "1x_cpu_2gb"}, headers=headers).json()
    [ep] = client.get(f"{P}/endpoints", headers=headers).json()["data"]
    assert ep["name"] == v1["name"] and len(ep["deployments"]) == 1
    assert ep["deployments"][0]["estimatedEffectiveTrafficShare"] == 1.0
    # Other tenants see none of it.
    other = {"Authorization": f"Bearer {client.app.state.services.accounts.create_key('other')}"}  # type: ignore[attr-defined]
    assert client.get(f"{P}/endpoints", headers=other).json()["data"] == []
    assert client.get(f"{P}/endpoints/{ep['id']}", headers=other).status_code == 404
    client.delete(f"/v1/endpoints/{v1['id']}", headers=headers)
    assert client.get(f"{P}/endpoints", headers=headers).json()["data"] == []


def test_the_autoscaler_waits_out_its_windows() -> None:
    policy = Policy.of(1, 4, 2, {"scaleUpWindow": "10s", "scaleDownWindow": "1m"})
    assert (policy.target, policy.up_s, policy.down_s) == (2.0, 10.0, 60.0)
    pressure = Pressure()
    assert decide(policy, 1, 7, 0, pressure, now=100) == 1  # wants 4, but only since now
    assert decide(policy, 1, 7, 0, pressure, now=109) == 1
    assert decide(policy, 1, 7, 0, pressure, now=110) == 4
    assert decide(policy, 4, 0, 0, pressure, now=111) == 4
    assert decide(policy, 4, 0, 0, pressure, now=171) == 1
    asleep = Policy.of(0, 2, None, {"scaleToZeroWindow": "5m"})
    assert decide(asleep, 1, 0, 299, Pressure(), now=0) == 1
    assert decide(asleep, 1, 0, 300, Pressure(), now=0) == 0
    assert seconds("1.5m", 0) == 90 and seconds(None, 7) == 7 and seconds("junk", 3) == 3


class _Load:
    def __init__(self) -> None:
        self.in_flight = 0


class _Running:
    """A replica handle that runs and never ends (``placement.ReplicaHandle``)."""

    name, where = "r", "pid 0"

    def poll(self) -> None:
        return None

    def stop(self) -> None:
        pass


def test_the_supervisor_scales_a_deployment_with_its_load_to_zero_and_back(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    client, headers = api
    services = client.app.state.services  # type: ignore[attr-defined]
    ep = client.post(f"{P}/endpoints", json={"name": "auto"}, headers=headers).json()
    scaling = {"minReplicas": 1, "maxReplicas": 3, "scaleUpWindow": "0s", "scaleDownWindow": "0s"}
    dep = _deploy(client, headers, ep["id"], "one", autoscaling=scaling, maxConcurrentRequestsPerReplica="2").json()
    supervisor, endpoint_id = services.serving.supervisor, deployment_id_of_wire(dep["id"])
    with services.db.session() as s:  # as the supervisor leaves it once its replica answers
        move(s.get(Endpoint, endpoint_id), EndpointState.STARTED)
    load = _Load()
    replica = Replica(endpoint_id, 0, _Running(), ready=True)  # type: ignore[arg-type]
    replica.engine = load  # type: ignore[assignment]

    def scale(in_flight: int) -> int:
        load.in_flight = in_flight
        with services.db.read() as s:
            row = s.get(Endpoint, endpoint_id)
        supervisor._autoscale(row, [replica])
        with services.db.read() as s:
            return int(s.get(Endpoint, endpoint_id).replicas)

    assert scale(5) == 3  # 5 in flight, 2 per replica: 3 replicas (its maximum), hardware reserved for them
    assert scale(2) == 1
    events = client.get(f"{P}/endpoints/{ep['id']}/events", params={"types": "deployment.scaled"}, headers=headers)
    assert [e["message"].split(": ")[1] for e in events.json()["data"]][:2] == [
        "1 -> 3 replicas (5 requests in flight)",
        "3 -> 1 replicas (2 requests in flight)",
    ]
    # Allowed to sleep: idle past its window, it stops every replica; the next request wakes it.
    fetched = client.get(f"{P}/endpoints/{ep['id']}/deployments/one", headers=headers).json()
    asleep = {"minReplicas": 0, "scaleToZeroWindow": "0s"}
    body = {"autoscaling": asleep, "etag": fetched["etag"]}
    patched = client.patch(
        f"{P}/endpoints/{ep['id']}/deployments/one", params={"updateMask": "autoscaling"}, json=body, headers=headers
    )
    assert patched.status_code == 200, patched.text
    assert scale(0) == 0
    with services.db.read() as s:
        row = s.get(Endpoint, endpoint_id)
    with pytest.raises(EngineOverloaded, match="scaling up from zero"):
        supervisor.engine_for(row)
    with services.db.read() as s:
        assert s.get(Endpoint, endpoint_id).replicas == 1


def test_an_endpoint_keeps_its_newest_events(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    services = client.app.state.services  # type: ignore[attr-defined]
    ep = client.post(f"{P}/endpoints", json={"name": "busy"}, headers=headers).json()
    events = Events(services.db, max_kept=10)
    for i in range(25):
        events.record(ep["id"], "test.tick", f"tick {i}")
    events.prune(ep["id"])
    kept = [e.message for e in events.list(ep["id"], types=["test.tick"])]
    assert kept == [f"tick {i}" for i in range(15, 25)]


def test_a_bad_autoscaling_object_is_refused_whole_and_never_reaches_the_supervisor(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = api
    ep = client.post(f"{P}/endpoints", json={"name": "bad-scaling"}, headers=headers).json()
    bad = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "scaleUpWindow": "soon",
        "scalingMetrics": [{"name": "active_sessions", "target": "x"}, "ttft"],
    }
    refused = _deploy(client, headers, ep["id"], "one", autoscaling=bad)
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert "scaleUpWindow" in message and "scalingMetrics must be a list of objects" in message
    assert Policy.of(1, 2, None, bad).target == 8  # and the policy reads what it can of one anyway


def test_renames_and_weights_are_checked(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    ep = client.post(f"{P}/endpoints", json={"name": "old"}, headers=headers).json()
    _deploy(client, headers, ep["id"], "blue")
    green = _deploy(client, headers, ep["id"], "green").json()
    path = f"{P}/endpoints/{ep['id']}"
    clash = client.patch(
        f"{path}/deployments/green", params={"updateMask": "name"}, json={"name": "blue"}, headers=headers
    )
    assert clash.status_code == 409, clash.text
    renamed = client.patch(path, params={"updateMask": "name"}, json={"name": "new"}, headers=headers).json()
    assert sorted(d["name"] for d in renamed["deployments"]) == ["acme/new/blue", "acme/new/green"]
    # The old name is free again, deployments and all.
    again = client.post(f"{P}/endpoints", json={"name": "old"}, headers=headers).json()
    assert _deploy(client, headers, again["id"], "blue").status_code == 200
    for weight in ("Infinity", "NaN", "heavy"):
        body = {"trafficSplit": [{"deploymentId": green["id"], "weight": weight}]}
        bad = client.patch(path, params={"updateMask": "trafficSplit"}, json=body, headers=headers)
        assert bad.status_code == 400, (weight, bad.text)


def test_endpoints_and_deployments_have_limits(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    endpoints = client.app.state.services.serving.endpoints  # type: ignore[attr-defined]
    endpoints.settings = endpoints.settings.model_copy(
        update={"quota_endpoints": 2, "quota_deployments_per_endpoint": 1}
    )
    first = client.post(f"{P}/endpoints", json={"name": "one"}, headers=headers).json()
    assert client.post(f"{P}/endpoints", json={"name": "two"}, headers=headers).status_code == 200
    third = client.post(f"{P}/endpoints", json={"name": "three"}, headers=headers)
    assert third.status_code == 429 and "MODELPORT_QUOTA_ENDPOINTS" in third.json()["error"]["message"]
    assert _deploy(client, headers, first["id"], "a").status_code == 200
    second = _deploy(client, headers, first["id"], "b")
    assert second.status_code == 429 and "MODELPORT_QUOTA_DEPLOYMENTS_PER_ENDPOINT" in second.json()["error"]["message"]
