"""Together v2 rollouts over HTTP: the step ladder, gates, the user's moves, concurrency, restarts.

The supervisor is not running (``supervise=False``), and neither is the rollout controller: each test
calls ``tick`` itself, so every step happens when the test says. A deployment is made ready by moving
its row to STARTED (what the supervisor does once its replicas answer) and by the supervisor's
``ready_replicas`` answering 1; a slow target is made by feeding the router's ``TrafficStats`` directly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.accounts.service import Principal
from modelport.endpoints.hardware import GIB
from modelport.endpoints.rollout_driver import RolloutController
from modelport.endpoints.rollouts import Rollouts
from modelport.endpoints.service import EndpointSpec
from modelport.endpoints.states import EndpointState, move
from modelport.endpoints.supervisor import ReplicaLoad
from modelport.endpoints.traffic import TrafficStats
from modelport.ids import wire_deployment_id
from modelport.services import Services
from modelport.storage.db.tables import Endpoint, Rollout, Route
from tests.api.conftest import idle_app
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of

BREACH = "ROLLOUT_FAILURE_CATEGORY_METRIC_REGRESSION"
PASSED = "ROLLOUT_STEP_STATE_PASSED"
LATENCY_GATE = {
    "name": "router_latency",
    "stat": "METRIC_STAT_TYPE_PERCENTILE",
    "percentile": 95,
    "window": "60s",
    "regressionCheck": {"direction": "REGRESSION_DIRECTION_HIGHER_IS_WORSE", "maxRegressionPercent": 10.0},
}


@dataclass
class Ready:
    """The supervisor's ``ready_replicas``, as the tests set it (the real one has no replicas here)."""

    counts: dict[str, int] = field(default_factory=dict)

    def ready_replicas(self, endpoint_id: str) -> int:
        return self.counts.get(endpoint_id, 1)

    def replica_loads(self) -> list[ReplicaLoad]:
        return []


@dataclass
class Api:
    client: TestClient
    headers: dict[str, str]
    services: Services
    who: Principal
    ready: Ready

    @property
    def rollouts(self) -> Rollouts:
        return self.services.live.rollouts

    def call(self, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
        resp = self.client.request(method, path, json=body, headers=self.headers, **kw)
        assert resp.status_code == status, resp.text
        return resp.json()


@dataclass
class Pair:
    """A route with two started deployments: ``blue`` has all the traffic, ``green`` none."""

    route: Route
    blue: Endpoint
    green: Endpoint

    @property
    def base(self) -> str:
        return f"/v2/projects/null/endpoints/{self.route.id}/rollouts"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub, tiny_llama: Path) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("rollouts")
    with idle_app(tmp, hub, endpoint_memory_bytes=256 * GIB, quota_endpoint_share=1.0) as served:
        served.upload(hub, "base", files_of(tiny_llama))
        services: Services = served.client.app.state.services  # type: ignore[attr-defined]
        ready = Ready()
        # The supervisor is not running: readiness is what the test says it is.
        services.live.rollouts.driver.replicas = ready
        who = services.accounts.authenticate(served.key)
        yield Api(served.client, served.headers, services, who, ready)


@pytest.fixture
def pair(api: Api) -> Pair:
    routes = api.services.live.routes
    route = routes.create(api.who, f"chat-{uuid.uuid4().hex[:8]}")
    deployments = []
    for label, high in (("blue", 1), ("green", 3)):
        spec = EndpointSpec(model="base", hardware="1x_cpu_2gb", label=label, max_replicas=high)
        created = routes.create_deployment(api.who, routes.get(api.who, route.id), spec)
        assert created is not None
        deployments.append(started(api, created.id))
    return Pair(routes.get(api.who, route.id), *deployments)


def started(api: Api, deployment_id: str) -> Endpoint:
    """What the supervisor does once every replica answers."""
    with api.services.db.session() as s:
        row = s.get(Endpoint, deployment_id)
        assert row is not None
        move(row, EndpointState.STARTED)
    return row


def weights(api: Api, pair: Pair) -> tuple[float, float]:
    """(blue, green) as the route's traffic split has them now."""
    split = {t["deployment_id"]: t["weight"] for t in api.services.live.routes.get(api.who, pair.route.id).traffic}
    return split.get(pair.blue.id, 0.0), split.get(pair.green.id, 0.0)


def create(api: Api, pair: Pair, **body: Any) -> dict[str, Any]:
    created: dict[str, Any] = api.call(
        "POST", pair.base, {"targetDeploymentId": wire_deployment_id(pair.green.id)} | body
    )
    return created


def start(api: Api, pair: Pair, rollout_id: str) -> dict[str, Any]:
    # The CLI's start has an empty body (Content-Length: 0), with the SDK's JSON content type all the same.
    headers = api.headers | {"Content-Type": "application/json"}
    resp = api.client.post(f"{pair.base}/{rollout_id}/start", content=b"", headers=headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def get(api: Api, pair: Pair, rollout_id: str) -> dict[str, Any]:
    body: dict[str, Any] = api.call("GET", f"{pair.base}/{rollout_id}")
    return body


def elapse(api: Api, rollout_id: str, seconds: float) -> None:
    """Let the current step's time pass (its gates' windows are longer than a test should sleep)."""
    with api.services.db.session() as s:
        row = s.get(Rollout, rollout_id)
        assert row is not None and row.step_started_at is not None
        row.step_started_at -= timedelta(seconds=seconds)


def events(api: Api, pair: Pair) -> list[tuple[str, str, str]]:
    return [(e.type, e.level, e.message) for e in api.services.live.events.list(pair.route.id)]


def test_a_canary_climbs_its_ladder_once_the_target_is_ready_and_completes(api: Api, pair: Pair) -> None:
    steps = [{"traffic": 10}, {"traffic": 50}, {"traffic": 100}]
    rollout = create(api, pair, canary={"steps": steps, "stepInterval": "0s"})
    assert rollout["id"].startswith("rol_") and rollout["endpointId"] == pair.route.id
    assert rollout["sourceDeploymentId"] == wire_deployment_id(pair.blue.id)  # the only one with traffic
    assert rollout["targetDeploymentId"] == wire_deployment_id(pair.green.id)
    assert (rollout["state"], rollout["strategy"]) == ("ROLLOUT_STATE_PENDING", "ROLLOUT_STRATEGY_TYPE_CANARY")
    assert rollout["status"]["totalSteps"] == 3 and rollout["currentTrafficPercent"] == 0
    assert "currentStep" not in rollout  # unset until it starts
    assert [s["targetTrafficPercent"] for s in rollout["status"]["steps"]] == [10, 50, 100]
    assert (rollout["spec"]["finalSourceReplicas"], rollout["spec"]["finalTargetReplicas"]) == (0, 1)  # defaults
    assert api.services.live.routes.active_rollout(pair.route.id) == rollout["id"]

    api.rollouts.tick()  # PENDING: nothing moves before start
    assert weights(api, pair) == (1.0, 0.0)
    assert start(api, pair, rollout["id"])["state"] == "ROLLOUT_STATE_RUNNING"
    api.ready.counts[pair.green.id] = 0
    api.rollouts.tick()  # the target has no ready replica yet: the first step waits
    assert weights(api, pair) == (1.0, 0.0)
    assert get(api, pair, rollout["id"])["status"]["steps"][0]["state"] == "ROLLOUT_STEP_STATE_PENDING"
    api.ready.counts[pair.green.id] = 1

    for percent in (10, 50, 100):
        api.rollouts.tick()
        now = get(api, pair, rollout["id"])
        assert now["currentTrafficPercent"] == percent and now["state"] == "ROLLOUT_STATE_RUNNING"
        assert weights(api, pair) == pytest.approx((1 - percent / 100, percent / 100))
    api.rollouts.tick()
    done = get(api, pair, rollout["id"])
    assert done["state"] == "ROLLOUT_STATE_COMPLETED" and weights(api, pair) == (0.0, 1.0)
    assert [s["state"] for s in done["status"]["steps"]] == [PASSED] * 3
    assert done["startedAt"] and done["completedAt"]
    blue = api.services.live.routes.deployment(api.who, pair.route, pair.blue.id)
    assert (blue.state, blue.min_replicas, blue.max_replicas) == (EndpointState.STOPPING, 0, 0)  # the source stops
    assert api.services.live.routes.active_rollout(pair.route.id) is None
    kinds = [kind for kind, _, _ in events(api, pair)]
    assert {"rollout.created", "rollout.started", "rollout.step", "rollout.completed"} <= set(kinds)


def test_a_breached_gate_pauses_the_rollout_and_gives_the_source_its_traffic_back(api: Api, pair: Pair) -> None:
    steps = [{"traffic": 50}, {"traffic": 100}]
    rollout = create(api, pair, canary={"steps": steps, "stepInterval": "0s"}, metrics=[LATENCY_GATE])
    running = start(api, pair, rollout["id"])
    api.rollouts.tick()
    assert weights(api, pair) == pytest.approx((0.5, 0.5))
    # A step climbed keeps the etag: a move made on what was read before it still lands...
    assert get(api, pair, rollout["id"])["etag"] == running["etag"]
    stats = api.rollouts.driver.stats
    for _ in range(10):  # the target answers in 2 s, the source in 0.1 s
        stats.record(pair.green.id, 2.0, True)
        stats.record(pair.blue.id, 0.1, True)
    api.rollouts.tick()  # a step runs as long as its gate's 60 s window, though its interval is 0 s
    assert get(api, pair, rollout["id"])["state"] == "ROLLOUT_STATE_RUNNING"
    elapse(api, rollout["id"], 60)
    api.rollouts.tick()

    paused = get(api, pair, rollout["id"])
    assert paused["state"] == "ROLLOUT_STATE_SYSTEM_PAUSED" and paused["currentTrafficPercent"] == 0
    assert weights(api, pair) == (1.0, 0.0)
    [condition] = paused["status"]["conditions"]
    assert condition["category"] == BREACH and condition["atStep"] == 0
    assert paused["status"]["condition"] == condition  # the one the CLI renders
    assert "router_latency" in condition["message"] and "target 2000" in condition["message"]
    assert "source 100" in condition["message"] and paused["pauseInfo"]["reason"] == condition["message"]
    step = paused["status"]["steps"][0]
    assert step["state"] == "ROLLOUT_STEP_STATE_FAILED" and step["failureReason"] == condition["message"]
    assert (
        step["metrics"]
        == condition["metrics"]
        == [
            {
                "name": "router_latency",
                "stat": "METRIC_STAT_TYPE_PERCENTILE",
                "percentile": 95,
                "check": "METRIC_CHECK_TYPE_REGRESSION",
                "direction": "REGRESSION_DIRECTION_HIGHER_IS_WORSE",
                "maxRegressionPercent": 10.0,
                "verdict": "METRIC_VERDICT_BREACHED",
                "targetValue": 2000.0,
                "sourceValue": 100.0,
            }
        ]
    )
    assert any(k == "rollout.gate_breached" and level == "LEVEL_WARN" for k, level, _ in events(api, pair))
    api.rollouts.tick()  # SYSTEM_PAUSED holds
    assert weights(api, pair) == (1.0, 0.0)
    # ...but the gate's pause is a new state: a move made on the running rollout is refused.
    move = {"etag": running["etag"]}
    stale = api.client.post(f"{pair.base}/{rollout['id']}/promote", json=move, headers=api.headers)
    assert stale.status_code == 409 and "stale" in stale.text
    canceled = api.call("POST", f"{pair.base}/{rollout['id']}/cancel", {"reason": "too slow", "etag": paused["etag"]})
    assert canceled["state"] == "ROLLOUT_STATE_CANCELED"


def test_pause_holds_the_split_resume_reruns_the_step_and_promote_completes(api: Api, pair: Pair) -> None:
    rollout = create(api, pair, finalSourceReplicas=1)  # the defaults: 5, 25, 50, 100 % every 3 minutes
    assert [s["targetTrafficPercent"] for s in rollout["status"]["steps"]] == [5, 25, 50, 100]
    assert rollout["spec"]["canary"]["stepInterval"] == "180s"
    start(api, pair, rollout["id"])
    api.rollouts.tick()
    api.rollouts.tick()  # the step's 3 minutes have not passed: it stays
    assert get(api, pair, rollout["id"])["currentStep"] == 0 and weights(api, pair) == pytest.approx((0.95, 0.05))

    paused = api.call("POST", f"{pair.base}/{rollout['id']}/pause", {"reason": "lunch"})
    assert paused["state"] == "ROLLOUT_STATE_PAUSED" and paused["pauseInfo"]["reason"] == "lunch"
    elapse(api, rollout["id"], 600)
    api.rollouts.tick()
    assert weights(api, pair) == pytest.approx((0.95, 0.05))  # the split holds while paused
    resumed = api.call("POST", f"{pair.base}/{rollout['id']}/resume", {"etag": paused["etag"]})
    assert resumed["state"] == "ROLLOUT_STATE_RUNNING" and "pauseInfo" not in resumed
    assert resumed["status"]["steps"][0]["state"] == "ROLLOUT_STEP_STATE_PENDING"
    api.rollouts.tick()  # the step runs again, from its start
    again = get(api, pair, rollout["id"])
    assert again["status"]["steps"][0]["state"] == "ROLLOUT_STEP_STATE_RUNNING" and again["currentStep"] == 0

    promoted = api.call("POST", f"{pair.base}/{rollout['id']}/promote", {})
    assert promoted["state"] == "ROLLOUT_STATE_COMPLETED" and promoted["currentTrafficPercent"] == 100
    assert weights(api, pair) == (0.0, 1.0)
    blue = api.services.live.routes.deployment(api.who, pair.route, pair.blue.id)
    assert (blue.state, blue.min_replicas, blue.max_replicas) == (EndpointState.STARTED, 1, 1)  # finalSourceReplicas


def test_cancel_freezes_or_reverts_the_split_and_only_finished_rollouts_delete(api: Api, pair: Pair) -> None:
    first = create(api, pair, canary={"steps": [{"traffic": 25}, {"traffic": 100}]})
    start(api, pair, first["id"])
    api.rollouts.tick()
    conflict = api.client.delete(f"{pair.base}/{first['id']}", headers=api.headers)
    assert conflict.status_code == 409 and "cancel it first" in conflict.text
    freeze = {"reason": "hold", "disposition": "CANCEL_DISPOSITION_FREEZE"}
    frozen = api.call("POST", f"{pair.base}/{first['id']}/cancel", freeze)
    assert frozen["state"] == "ROLLOUT_STATE_CANCELED" and weights(api, pair) == pytest.approx((0.75, 0.25))
    assert frozen["status"]["condition"]["message"] == "canceled (freeze): hold"

    # Over the pair the cancel froze at 25 %, the default ladder starts above it.
    preview = api.call("POST", f"{pair.base}/preview-defaults", {"targetDeploymentId": pair.green.id})
    assert preview["estimatedEffectiveSteps"] == [{"traffic": 50}, {"traffic": 100}]
    assert preview["frozenPair"] is True and preview["estimatedSeedPercent"] == 25
    second = create(api, pair, canary={"steps": [{"traffic": 50}, {"traffic": 100}]})  # the first is finished
    start(api, pair, second["id"])
    api.rollouts.tick()
    assert weights(api, pair) == pytest.approx((0.5, 0.5))  # half of the pair's combined weight
    body = {"reason": "bad", "disposition": "CANCEL_DISPOSITION_REVERT", "etag": get(api, pair, second["id"])["etag"]}
    reverted = api.call("POST", f"{pair.base}/{second['id']}/cancel", body)
    assert reverted["currentTrafficPercent"] == 0 and weights(api, pair) == (1.0, 0.0)

    listed = api.call("GET", pair.base, params={"filter": "ROLLOUT_FILTER_TERMINAL"})
    assert [r["id"] for r in listed["data"]] == [first["id"], second["id"]] and listed["next_cursor"] is None
    assert api.call("GET", pair.base, params={"filter": "ROLLOUT_FILTER_ACTIVE"})["data"] == []
    stale = api.client.delete(f"{pair.base}/{first['id']}", params={"etag": "0" * 16}, headers=api.headers)
    assert stale.status_code == 409
    assert api.call("DELETE", f"{pair.base}/{first['id']}", params={"etag": frozen["etag"]}) == {}
    api.call("GET", f"{pair.base}/{first['id']}", status=404)


def test_one_rollout_in_progress_per_endpoint_and_stale_etags_are_refused(api: Api, pair: Pair) -> None:
    rollout = create(api, pair)
    again = api.client.post(pair.base, json={"targetDeploymentId": pair.green.id}, headers=api.headers)
    assert again.status_code == 409 and rollout["id"] in again.text
    assert again.headers["x-should-retry"] == "false"  # the SDK would retry a 409 otherwise
    running = start(api, pair, rollout["id"])
    stale = api.client.post(f"{pair.base}/{rollout['id']}/pause", json={"etag": rollout["etag"]}, headers=api.headers)
    assert stale.status_code == 409 and "stale" in stale.text
    assert api.call("POST", f"{pair.base}/{rollout['id']}/pause", {"etag": running["etag"]})["state"].endswith("PAUSED")
    twice = api.client.post(f"{pair.base}/{rollout['id']}/start", headers=api.headers)
    assert twice.status_code == 409 and "cannot start" in twice.text
    api.call("POST", f"{pair.base}/{rollout['id']}/cancel", {"reason": "done"})


def test_a_new_controller_on_the_same_database_carries_on(api: Api, pair: Pair) -> None:
    steps = [{"traffic": 20}, {"traffic": 60}, {"traffic": 100}]
    rollout = create(api, pair, canary={"steps": steps, "stepInterval": "0s"})
    start(api, pair, rollout["id"])
    api.rollouts.tick()
    assert get(api, pair, rollout["id"])["currentTrafficPercent"] == 20
    # A restarted server: new parts over the same rows, and no traffic stats (they were in memory).
    live = api.services.live
    restarted = Rollouts(api.services.db, live.routes, live.events, TrafficStats(), Ready())
    restarted.tick()
    assert get(api, pair, rollout["id"])["currentTrafficPercent"] == 60
    restarted.tick()
    restarted.tick()
    assert get(api, pair, rollout["id"])["state"] == "ROLLOUT_STATE_COMPLETED" and weights(api, pair) == (0.0, 1.0)


def test_bad_requests_are_reported_whole_and_preview_fills_in_the_defaults(api: Api, pair: Pair) -> None:
    bad = {
        "targetDeploymentId": pair.green.id,
        "canary": {"steps": [{"traffic": 50}, {"traffic": 20}], "stepInterval": "soon"},
        "metrics": [{"name": "gpu_joy", "thresholdCheck": {"operator": "THRESHOLD_OPERATOR_GT", "value": 1}}],
        "finalSourceReplicas": -1,
        "finalTargetReplicas": 0,
    }
    message = api.call("POST", pair.base, bad, status=400)["error"]["message"]
    for problem in ("steps[1].traffic", "end at 100", "stepInterval", "metrics[0].name", "finalSourceReplicas"):
        assert problem in message, message
    assert "finalTargetReplicas must be a whole number >= 1" in message
    mixed = {"targetDeploymentId": pair.green.id, "blueGreen": {}, "metrics": [LATENCY_GATE]}
    assert "canary rollouts only" in api.call("POST", pair.base, mixed, status=400)["error"]["message"]
    assert "targetDeploymentId" in api.call("POST", pair.base, {}, status=400)["error"]["message"]
    api.call("POST", pair.base, {"targetDeploymentId": "dep_" + "0" * 32}, status=404)

    ask = {"targetDeploymentId": pair.green.label, "rolling": {}, "finalTargetReplicas": 5}
    preview = api.call("POST", f"{pair.base}/preview-defaults", ask)
    assert (preview["sourceReplicas"], preview["targetReplicas"], preview["targetMaxReplicas"]) == (1, 1, 3)
    assert preview["spec"]["sourceDeploymentId"] == wire_deployment_id(pair.blue.id)
    assert preview["spec"]["finalSourceReplicas"] == 0 and preview["estimatedEffectiveSteps"] == []
    assert [w["code"] for w in preview["warnings"]] == ["ROLLOUT_WILL_RAISE_TARGET_MAX"]
    rolling = create(api, pair, rolling={})  # one step per replica of the target (max 3)
    assert [s["targetTrafficPercent"] for s in rolling["status"]["steps"]] == [33, 67, 100]
    assert rolling["strategy"] == "ROLLOUT_STRATEGY_TYPE_ROLLING"
    api.call("POST", f"{pair.base}/{rolling['id']}/cancel", {"reason": "next"})
    blue_green = create(api, pair, blueGreen={}, finalTargetReplicas=2)
    assert [s["targetTrafficPercent"] for s in blue_green["status"]["steps"]] == [100]
    start(api, pair, blue_green["id"])
    api.rollouts.tick()
    api.rollouts.tick()  # blue-green: switched, nothing to wait for, done
    assert get(api, pair, blue_green["id"])["state"] == "ROLLOUT_STATE_COMPLETED"
    green = api.services.live.routes.deployment(api.who, pair.route, pair.green.id)
    assert (green.min_replicas, green.max_replicas) == (2, 3)  # a floor of 2, under its own maximum


def test_the_controller_thread_advances_a_started_rollout_at_once(api: Api, pair: Pair) -> None:
    rollout = create(api, pair, canary={"steps": [{"traffic": 50}, {"traffic": 100}], "stepInterval": "0s"})
    controller = RolloutController(api.rollouts.driver, interval_s=0.02)
    controller.start()
    try:
        start(api, pair, rollout["id"])  # wakes it
        deadline = time.monotonic() + 10
        while get(api, pair, rollout["id"])["state"] != "ROLLOUT_STATE_COMPLETED" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        controller.stop()
    assert get(api, pair, rollout["id"])["state"] == "ROLLOUT_STATE_COMPLETED" and weights(api, pair) == (0.0, 1.0)


def test_a_gate_without_data_holds_its_step_then_pauses_the_rollout(api: Api, pair: Pair) -> None:
    """A quiet endpoint (or a target failing every request, which gives no latency) never passes a gate
    it could not read."""
    quiet_gate = LATENCY_GATE | {"window": "1s"}
    rollout = create(
        api, pair, canary={"steps": [{"traffic": 50}, {"traffic": 100}], "stepInterval": "1s"}, metrics=[quiet_gate]
    )
    start(api, pair, rollout["id"])
    api.ready.counts[pair.green.id] = 1
    api.rollouts.tick()
    elapse(api, rollout["id"], 5)
    api.rollouts.tick()  # past the step's interval, but its gate saw nothing: the step runs on
    held = get(api, pair, rollout["id"])
    assert (held["state"], held["currentTrafficPercent"]) == ("ROLLOUT_STATE_RUNNING", 50)
    assert held["status"]["steps"][0]["state"] == "ROLLOUT_STEP_STATE_RUNNING"
    elapse(api, rollout["id"], 60)
    api.rollouts.tick()
    paused = get(api, pair, rollout["id"])
    assert paused["state"] == "ROLLOUT_STATE_SYSTEM_PAUSED" and weights(api, pair) == (1.0, 0.0)
    condition = paused["status"]["condition"]
    assert condition["category"] == "ROLLOUT_FAILURE_CATEGORY_METRICS_UNAVAILABLE"
    assert "router_latency" in condition["message"]
    [metric] = paused["status"]["steps"][0]["metrics"]
    assert metric["verdict"] == "METRIC_VERDICT_UNAVAILABLE" and "targetValue" not in metric
    assert api.call("POST", f"{pair.base}/{rollout['id']}/cancel", {"reason": "test"})["state"] == (
        "ROLLOUT_STATE_CANCELED"
    )
