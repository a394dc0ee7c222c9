"""Together 3.x's A/B and shadow experiments (``E/abExperiments``, ``E/shadowExperiments[/…/targets]``).

Deployments are rows here: the supervisor is not running (``supervise=False``) and they are created
stopped, so no hardware is reserved and every test gets an endpoint of its own on one shared app.
Requests routed through experiments end to end: ``tests/e2e/test_together_v2_endpoints.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.accounts.service import Principal
from modelport.endpoints.hardware import GIB
from modelport.endpoints.routes import LIVE, SHADOW
from modelport.endpoints.service import EndpointSpec
from modelport.endpoints.states import EndpointState
from modelport.endpoints.traffic import shares
from modelport.errors import InvalidRequest
from modelport.ids import deployment_id_of_wire, wire_deployment_id
from modelport.services import Services
from modelport.storage.db.tables import Endpoint, Route
from tests.api.conftest import idle_app
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of

pytestmark = pytest.mark.db_agnostic

P = "/v2/projects/null/endpoints"
CONTROL, VARIANT = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"
UNIFORM = {"endpoint": {"sampling": {"uniform": {"rate": 0.2}}}}


@dataclass
class Api:
    client: TestClient
    headers: dict[str, str]
    services: Services
    who: Principal

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: str) -> Any:
        return self.client.request(method, P + path, json=body, params=params, headers=self.headers)

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None, **params: str) -> Any:
        resp = self.call(method, path, body, **params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def endpoint(self, name: str, *deployments: str) -> tuple[Route, dict[str, str]]:
        """A route with stopped deployments (the first takes all traffic) and their ``dep_`` ids by name."""
        routes = self.services.live.routes
        route = routes.create(self.who, name)
        ids = {}
        for label in deployments:
            spec = EndpointSpec(model="base", hardware="1x_cpu_2gb", state=EndpointState.STOPPED, label=label)
            # A fresh read of the route each time: the first live deployment is the one that finds no weight.
            deployment = routes.create_deployment(self.who, routes.get(self.who, route.id), spec)
            assert deployment is not None
            ids[label] = wire_deployment_id(deployment.id)
        return routes.get(self.who, route.id), ids

    def weigh(self, route: Route, weights: dict[str, float]) -> None:
        split = [{"deployment_id": deployment_id_of_wire(d), "weight": w} for d, w in weights.items()]
        self.services.live.routes.update(self.who, route.id, None, {"traffic": split})

    def deployment(self, wire_id: str) -> Endpoint:
        with self.services.db.read() as s:
            row = s.get(Endpoint, deployment_id_of_wire(wire_id))
        assert row is not None
        return row

    def shares(self, route: Route) -> dict[str, float]:
        route = self.services.live.routes.get(self.who, route.id)
        deployments = self.services.live.routes.deployments(route.id)
        live = {d.id for d in deployments if d.traffic_mode == LIVE}
        split = shares(route.traffic, live, self.services.live.experiments.list(route, "ab"))
        return {wire_deployment_id(d): round(w, 6) for d, w in split.items()}

    def events(self, route: Route) -> list[str]:
        return [e.type for e in self.services.live.events.list(route.id)]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub, tiny_llama: Path) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("experiments")
    with idle_app(tmp, hub, endpoint_memory_bytes=8 * GIB, quota_endpoint_share=1.0) as served:
        served.upload(hub, "base", files_of(tiny_llama))
        services: Services = served.client.app.state.services  # type: ignore[attr-defined]
        yield Api(served.client, served.headers, services, services.accounts.authenticate(served.key))


def member(deployment: str, percent: int, role: str = VARIANT) -> dict[str, Any]:
    return {"deploymentId": deployment, "percent": percent, "role": role}


def error(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    return str(resp.json()["error"]["message"])


# --- A/B ------------------------------------------------------------------------------------------
def test_an_ab_experiment_divides_its_controls_share_between_its_members(api: Api) -> None:
    route, dep = api.endpoint("ab-split", "blue", "green", "red")
    api.weigh(route, {dep["blue"]: 1, dep["green"]: 0, dep["red"]: 1})
    assert api.shares(route) == {dep["blue"]: 0.5, dep["red"]: 0.5}

    body = {"name": "blue-ab", "members": [member(dep["blue"], 70, CONTROL), member("green", 30)]}
    x = api.ok("POST", f"/{route.id}/abExperiments", body)
    assert x["id"].startswith("abx_") and x["name"] == "blue-ab" and x["endpointId"] == route.id
    assert x["projectId"] == api.who.account_id and x["createdBy"] == "acme" and x["etag"]
    assert x["members"] == [member(dep["blue"], 70, CONTROL), member(dep["green"], 30)]  # names become dep_ ids
    assert api.shares(route) == {dep["blue"]: 0.35, dep["green"]: 0.15, dep["red"]: 0.5}

    # The CLI's `tg endpoints ab` moves percent from the control with a PATCH of the members.
    moved = api.ok(
        "PATCH",
        f"/{route.id}/abExperiments/{x['id']}",
        {"members": [member(dep["blue"], 40, CONTROL), member(dep["green"], 60)], "etag": x["etag"]},
        updateMask="members",
    )
    assert moved["etag"] != x["etag"] and moved["members"][1]["percent"] == 60
    assert api.shares(route) == {dep["blue"]: 0.2, dep["green"]: 0.3, dep["red"]: 0.5}
    listed = api.ok("GET", f"/{route.id}/abExperiments")
    assert listed["object"] == "list" and [i["id"] for i in listed["data"]] == [x["id"]]
    assert api.ok("GET", f"/{route.id}/abExperiments/blue-ab")["id"] == x["id"]  # by name too

    assert api.ok("DELETE", f"/{route.id}/abExperiments/{x['id']}", etag=moved["etag"]) == {}
    assert api.call("GET", f"/{route.id}/abExperiments/{x['id']}").status_code == 404
    assert api.shares(route) == {dep["blue"]: 0.5, dep["red"]: 0.5}
    assert {"experiment.created", "experiment.updated", "experiment.deleted"} <= set(api.events(route))


def test_ab_members_are_checked_and_every_problem_is_reported(api: Api) -> None:
    route, dep = api.endpoint("ab-checks", "blue", "green", "red")
    post = lambda members: api.call("POST", f"/{route.id}/abExperiments", {"name": "x", "members": members})  # noqa: E731

    message = error(post([member(dep["blue"], 100, CONTROL)]), 400)
    assert "2-20 members, not 1" in message
    message = error(post([member(dep["blue"], 60, CONTROL), member(dep["green"], 30), member("nope", 5)]), 400)
    assert "sum to 100, not 95" in message and "'nope' not found" in message  # both problems at once
    message = error(post([member(dep["blue"], 50, CONTROL), member(dep["green"], 50, CONTROL)]), 400)
    assert "exactly one member must be the control" in message
    assert "at least 1 percent" in error(post([member(dep["blue"], 0, CONTROL), member(dep["green"], 100)]), 400)
    assert "named twice" in error(post([member(dep["blue"], 50, CONTROL), member("blue", 50)]), 400)
    assert "role must be" in error(post([member(dep["blue"], 50, CONTROL), member(dep["green"], 50, "BOSS")]), 400)
    # The control must have weight to divide: green joined at weight 0.
    message = error(post([member(dep["green"], 50, CONTROL), member(dep["blue"], 50)]), 400)
    assert "control green has no weight" in message and "trafficSplit" in message
    assert post([member(dep["blue"], 50, CONTROL), member(dep["green"], 50)] * 11).status_code == 400  # 22 members

    assert post([member(dep["blue"], 50, CONTROL), member(dep["green"], 50)]).status_code == 200
    taken = post([member(dep["blue"], 50, CONTROL), member(dep["green"], 50)])
    assert "already exists" in error(taken, 409) and taken.headers["x-should-retry"] == "false"
    again = api.call(
        "POST",
        f"/{route.id}/abExperiments",
        {"name": "y", "members": [member(dep["blue"], 50, CONTROL), member(dep["red"], 50)]},
    )
    assert "already in A/B experiment x" in error(again, 400)
    assert api.call("POST", f"/{route.id}/abExperiments", {"members": []}).status_code == 422  # no name


def test_ab_writes_with_a_stale_etag_are_refused(api: Api) -> None:
    route, dep = api.endpoint("ab-etags", "blue", "green")
    body = {"name": "x", "members": [member(dep["blue"], 90, CONTROL), member(dep["green"], 10)]}
    x = api.ok("POST", f"/{route.id}/abExperiments", body)
    path = f"/{route.id}/abExperiments/{x['id']}"
    described = api.ok("PATCH", path, {"description": "first", "etag": x["etag"]}, updateMask="description")
    assert described["description"] == "first" and described["members"] == x["members"]
    stale = api.call("PATCH", path, {"description": "second", "etag": x["etag"]}, updateMask="description")
    assert "stale" in error(stale, 409)
    assert error(api.call("PATCH", path, {"name": "z"}, updateMask="name"), 400).startswith("updateMask names")
    assert "stale" in error(api.call("DELETE", path, etag=x["etag"]), 409)
    assert api.ok("GET", path)["description"] == "first"
    assert api.ok("DELETE", path, etag=described["etag"]) == {}


def test_experiments_belong_to_their_endpoints_account(api: Api) -> None:
    route, _ = api.endpoint("ab-private", "blue")
    other = {"Authorization": f"Bearer {api.services.accounts.create_key('mallory')}"}
    resp = api.client.get(f"{P}/{route.id}/abExperiments", headers=other)
    assert resp.status_code == 404
    assert api.call("GET", "/ep_nope/shadowExperiments").status_code == 404


# --- shadow ---------------------------------------------------------------------------------------
def test_a_shadow_experiment_copies_to_targets_that_take_no_live_traffic(api: Api) -> None:
    route, dep = api.endpoint("shadow-flow", "blue", "green", "red")
    x = api.ok("POST", f"/{route.id}/shadowExperiments", {"name": "shadow-rate-0.2", "source": UNIFORM, "targets": []})
    assert x["id"].startswith("exp_") and x["state"] == "SHADOW_EXPERIMENT_STATE_INACTIVE" and x["targets"] == []
    assert x["source"] == UNIFORM
    # The CLI reuses an experiment of the same name when the error says "already exists".
    again = api.call("POST", f"/{route.id}/shadowExperiments", {"name": "shadow-rate-0.2", "source": UNIFORM})
    assert "already exists" in error(again, 409)

    targets = f"/{route.id}/shadowExperiments/{x['id']}/targets"
    live = api.call("POST", targets, {"name": "blue-target", "targetDeploymentId": dep["blue"]})
    assert "weight 1 in the traffic split" in error(live, 400)
    target = api.ok("POST", targets, {"name": "green-target", "targetDeploymentId": dep["green"]})
    assert target["id"].startswith("tgt_") and target["experimentId"] == x["id"]
    assert target["targetDeploymentId"] == dep["green"] and target["mirroredRequests"] == "0"
    assert api.deployment(dep["green"]).traffic_mode == SHADOW
    with pytest.raises(InvalidRequest, match="shadow deployment"):  # the split cannot give it live traffic now
        api.weigh(route, {dep["blue"]: 1, dep["green"]: 1})
    shown = api.ok("GET", f"/{route.id}/shadowExperiments/{x['id']}")
    assert shown["state"] == "SHADOW_EXPERIMENT_STATE_ACTIVE" and [t["id"] for t in shown["targets"]] == [target["id"]]
    assert "already exists" in error(
        api.call("POST", targets, {"name": "green-target", "targetDeploymentId": "red"}), 409
    )
    assert "already a target" in error(api.call("POST", targets, {"name": "g2", "targetDeploymentId": "green"}), 409)
    # A shadow deployment cannot be an A/B member.
    ab = {"name": "ab", "members": [member(dep["blue"], 50, CONTROL), member(dep["green"], 50)]}
    assert "shadow deployment" in error(api.call("POST", f"/{route.id}/abExperiments", ab), 400)

    # Lists leave targets out unless asked.
    plain = api.ok("GET", f"/{route.id}/shadowExperiments")["data"]
    assert [i["id"] for i in plain] == [x["id"]] and "targets" not in plain[0]
    full = api.ok("GET", f"/{route.id}/shadowExperiments", includeTargets="true")["data"]
    assert full[0]["targets"][0]["name"] == "green-target"

    renamed = api.ok("PATCH", f"{targets}/{target['id']}", {"name": "g", "etag": target["etag"]}, updateMask="name")
    assert renamed["name"] == "g" and renamed["etag"] != target["etag"]
    assert "stale" in error(api.call("DELETE", f"{targets}/{target['id']}", etag=target["etag"]), 409)
    assert api.ok("DELETE", f"{targets}/g", etag=renamed["etag"]) == {}
    assert api.deployment(dep["green"]).traffic_mode == LIVE  # no target names it any more
    after = api.ok("GET", f"/{route.id}/shadowExperiments/{x['id']}")
    assert after["state"] == "SHADOW_EXPERIMENT_STATE_INACTIVE" and after["targets"] == []
    events = api.events(route)
    assert {"experiment.created", "experiment.target_added", "experiment.target_updated"} <= set(events)
    assert "experiment.target_removed" in events


def test_shadow_targets_report_what_this_server_measured(api: Api) -> None:
    route, dep = api.endpoint("shadow-stats", "blue", "green")
    body = {"name": "s", "source": UNIFORM, "targets": [{"name": "t", "targetDeploymentId": dep["green"]}]}
    x = api.ok("POST", f"/{route.id}/shadowExperiments", body)
    assert x["state"] == "SHADOW_EXPERIMENT_STATE_ACTIVE"
    stats = api.services.live.routing.stats
    for seconds, ok in ((0.010, True), (0.030, True), (0.5, False)):
        stats.record(deployment_id_of_wire(dep["blue"]), seconds, ok)
    stats.record(deployment_id_of_wire(dep["green"]), 0.020, True)
    [target] = api.ok("GET", f"/{route.id}/shadowExperiments/{x['id']}/targets")["data"]
    comparison = target["comparison"]
    assert comparison["window"] == "300s"
    assert comparison["target"] == {"requests": "1", "errors": "0", "p50Ms": 20.0, "p95Ms": 20.0}
    assert comparison["source"] == {"requests": "3", "errors": "1", "p50Ms": 10.0, "p95Ms": 30.0}
    assert target["mirroredRequests"] == "0"


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ({}, "exactly one of"),
        ({"endpoint": {"sampling": {"uniform": {"rate": 0.1}, "keyBased": {"key": "k", "rate": 0.1}}}}, "exactly one"),
        ({"endpoint": {"sampling": {"uniform": {"rate": 1.5}}}}, "rate must be a number from 0 to 1"),
        ({"endpoint": {"sampling": {"keyBased": {"rate": 0.5}}}}, "key is required"),
        ({"endpoint": {"sampling": {"adaptiveUniform": {"targetQps": 0, "window": "1m"}}}}, "targetQps must be"),
        ({"endpoint": {"sampling": {"adaptiveKeyBased": {"key": "k", "targetQps": 5, "window": "soon"}}}}, "window"),
    ],
)
def test_shadow_sampling_is_exactly_one_valid_kind(api: Api, source: dict[str, Any], says: str) -> None:
    route = api.services.live.routes.listed(api.who, "sampling")
    route_id = route[0].id if route else api.endpoint("sampling", "blue")[0].id
    resp = api.call("POST", f"/{route_id}/shadowExperiments", {"name": "s", "source": source})
    assert says in error(resp, 400)


def test_shadow_sampling_kinds_are_stored_as_the_router_reads_them(api: Api) -> None:
    route, _ = api.endpoint("shadow-kinds", "blue")
    adaptive = {"endpoint": {"sampling": {"adaptiveKeyBased": {"key": "x-user", "targetQps": "2.5", "window": "60s"}}}}
    x = api.ok("POST", f"/{route.id}/shadowExperiments", {"name": "s", "source": adaptive})
    assert x["source"]["endpoint"]["sampling"] == {
        "adaptiveKeyBased": {"key": "x-user", "targetQps": 2.5, "window": "60s"}
    }
    keyed = {"endpoint": {"sampling": {"keyBased": {"key": "x-user", "rate": 0.5}}}}
    path = f"/{route.id}/shadowExperiments/{x['id']}"
    stale = api.call("PATCH", path, {"source": keyed, "etag": "0" * 16}, updateMask="source")
    assert "stale" in error(stale, 409)
    changed = api.ok("PATCH", path, {"source": keyed, "etag": x["etag"]}, updateMask="source")
    assert changed["source"] == keyed and changed["etag"] != x["etag"]
    assert api.ok("DELETE", path, etag=changed["etag"]) == {}


def test_deleting_a_shadow_experiment_frees_its_targets(api: Api) -> None:
    route, dep = api.endpoint("shadow-delete", "blue", "green")
    body = {"name": "s", "source": UNIFORM, "targets": [{"name": "t", "targetDeploymentId": "green"}]}
    x = api.ok("POST", f"/{route.id}/shadowExperiments", body)
    assert api.deployment(dep["green"]).traffic_mode == SHADOW
    assert api.ok("DELETE", f"/{route.id}/shadowExperiments/{x['id']}") == {}
    assert api.deployment(dep["green"]).traffic_mode == LIVE
    api.weigh(route, {dep["blue"]: 1, dep["green"]: 1})  # live again: it may take traffic


def test_deleting_a_deployment_takes_it_out_of_its_experiments(api: Api) -> None:
    """``tg endpoints rm ep_… --force`` deletes deployments that are still in experiments."""
    route, dep = api.endpoint("forget", "blue", "green", "red", "mirror")
    members = [
        {"deploymentId": dep["blue"], "percent": 60, "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"},
        {"deploymentId": dep["green"], "percent": 20, "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"},
        {"deploymentId": dep["red"], "percent": 20, "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"},
    ]
    ab = api.ok("POST", f"/{route.id}/abExperiments", {"name": "ab", "members": members})
    body = {"name": "s", "source": UNIFORM, "targets": [{"name": "t", "targetDeploymentId": dep["mirror"]}]}
    shadow = api.ok("POST", f"/{route.id}/shadowExperiments", body)
    routes = api.services.live.routes
    routes.delete_deployment(api.who, route, "green", None)
    after = api.ok("GET", f"/{route.id}/abExperiments/{ab['id']}")
    assert {m["deploymentId"]: m["percent"] for m in after["members"]} == {dep["blue"]: 80, dep["red"]: 20}
    assert after["etag"] != ab["etag"]
    routes.delete_deployment(api.who, route, "mirror", None)
    emptied = api.ok("GET", f"/{route.id}/shadowExperiments/{shadow['id']}", includeTargets="true")
    assert emptied["targets"] == [] and emptied["state"] == "SHADOW_EXPERIMENT_STATE_INACTIVE"
    routes.delete_deployment(api.who, route, "red", None)  # one member left: no experiment
    assert api.call("GET", f"/{route.id}/abExperiments/{ab['id']}").status_code == 404
