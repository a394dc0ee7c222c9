"""``modelport endpoints show | deploy | split | rollout | events``: an endpoint's deployments, traffic split,
rollout and experiments through the v2 routes, with project ``null``.

The CLI runs in-process against the real app over HTTP. The supervisor is not running
(``supervise=False``): deployments stay PROVISIONING, which every command here accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from modelport.cli import endpoint_view as view
from modelport.cli.main import cli
from modelport.cli.v2endpoints import EndpointsV2
from modelport.endpoints.hardware import GIB
from modelport.storage.db.tables import Rollout
from tests.api.conftest import Served, idle_app
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of

pytestmark = pytest.mark.db_agnostic
P = "/v2/projects/null"


@dataclass
class Live:
    served: Served
    env: dict[str, str]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["endpoints", *args], env=self.env)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def api(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.served.client.request(method, path, headers=self.served.headers, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()

    @property
    def services(self) -> Any:
        return self.served.client.app.state.services  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub, tiny_llama: Path) -> Iterator[Live]:
    """``acme/base`` (one revision); each test makes its own endpoints."""
    tmp = tmp_path_factory.mktemp("cli-endpoints-v2")
    with idle_app(tmp, hub, endpoint_memory_bytes=64 * GIB, quota_endpoint_share=1.0) as served:
        served.upload(hub, "base", files_of(tiny_llama))
        with serve_in_thread(served.client.app) as base_url:
            env = {"MODELPORT_BASE_URL": base_url, "MODELPORT_API_KEY": served.key, "COLUMNS": "200"}
            yield Live(served, env)


def _deploy(live: Live, endpoint: str, name: str, *extra: str) -> str:
    result = live.ok("deploy", endpoint, "--model", "base", "--hardware", "1x_cpu_2gb", "--name", name, *extra)
    return result.stdout.strip()


def test_deploy_makes_the_endpoint_and_show_lists_its_deployments(live: Live) -> None:
    first = live.ok("deploy", "chat", "--model", "acme/base@1", "--hardware", "1x_cpu_2gb", "--name", "blue")
    blue = first.stdout.strip()
    assert blue.startswith("dep_") and "deployed blue to acme/chat: it takes the endpoint's traffic" in first.stderr
    second = live.ok(
        "deploy", "acme/chat", "--model", "base", "--hardware", "cr_1x_cpu_2gb", "--name", "green",
        "--min-replicas", "0", "--max-replicas", "2", "--max-concurrent", "4",
    )  # fmt: skip
    assert "`modelport endpoints rollout chat green`" in second.stderr
    assert "`modelport endpoints split chat green=1`" in second.stderr

    shown = live.ok("show", "chat").stdout
    assert "acme/chat" in shown and "blue 100%" in shown
    assert all(column in shown for column in view.DEPLOYMENT_COLUMNS)
    lines = {line.split()[0]: line.split() for line in shown.splitlines() if line.startswith(("blue ", "green "))}
    assert lines["blue"][1:] == ["acme/base@1", "1x_cpu_2gb", "PROVISIONING", "0/1", "1", "100%"]
    assert lines["green"][1:] == ["acme/base@1", "1x_cpu_2gb", "PROVISIONING", "0/1", "0", "0%"]
    assert "Recent events" in shown and "deployment.created" in shown

    detail = live.json("show", "acme/chat")
    assert set(detail) == {"endpoint", "deployments", "rollout", "abExperiments", "shadowExperiments", "events"}
    green = next(d for d in detail["deployments"] if d["name"] == "acme/chat/green")
    assert green["autoscaling"]["maxReplicas"] == 2 and green["maxConcurrentRequestsPerReplica"] == "4"
    assert detail["endpoint"]["id"].startswith("ep_") and detail["rollout"] is None
    assert live.json("show", detail["endpoint"]["id"])["endpoint"]["name"] == "acme/chat"

    # A deployment that fails on a new endpoint leaves no empty endpoint behind.
    failed = live.run("deploy", "ghost", "--model", "nope", "--hardware", "1x_cpu_2gb", "--name", "x")
    assert failed.exit_code == 4, failed.output
    assert live.run("show", "ghost").exit_code == 4
    missing = live.run("show", "nowhere")
    assert missing.exit_code == 4 and "`modelport endpoints deploy nowhere" in missing.stderr


def test_a_v1_endpoint_shows_as_an_endpoint_of_one_deployment(live: Live) -> None:
    v1 = live.api("POST", "/v1/endpoints", json={"model": "acme/base", "hardware": "1x_cpu_2gb"})
    detail = live.json("show", v1["name"])
    assert detail["endpoint"]["name"] == v1["name"] and len(detail["deployments"]) == 1
    assert live.ok("get", v1["name"]).stdout.count(v1["name"]) >= 1  # the v1 commands are unchanged


def test_split_sets_weights_and_says_to_retry_when_the_endpoint_changed(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deploy(live, "splitter", "blue")
    _deploy(live, "splitter", "green")
    table = live.ok("split", "splitter", "blue=3", "green=1").stdout
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.startswith(("blue", "green"))}
    assert rows == {"blue": ["3", "75%"], "green": ["1", "25%"]}
    # Deployments not named keep their weight.
    after = live.json("split", "splitter", "green=3")["deployments"]
    assert {view.label(d): d["estimatedEffectiveTrafficShare"] for d in after} == {"blue": 0.5, "green": 0.5}

    assert live.run("split", "splitter", "blue=x").exit_code == 2
    unknown = live.run("split", "splitter", "purple=1")
    assert unknown.exit_code == 4 and "it has: blue, green" in unknown.stderr

    read = live.json("show", "splitter")["endpoint"]
    live.ok("split", "splitter", "blue=1")  # another client writes meanwhile
    monkeypatch.setattr(EndpointsV2, "find", lambda self, ref: read)
    conflict = live.run("split", "splitter", "green=1")
    assert conflict.exit_code == 1, conflict.output
    assert "changed while this command ran" in conflict.stderr and "run the same command again" in conflict.stderr


def test_rollout_starts_then_pauses_resumes_and_cancels(live: Live) -> None:
    _deploy(live, "roll", "blue")
    _deploy(live, "roll", "green")
    started = live.json(
        "rollout", "roll", "green", "--canary", "10,50,100", "--interval", "30s", "--gate-latency-p95-regression", "15"
    )["rollout"]
    assert started["state"] == "ROLLOUT_STATE_RUNNING" and started["strategy"] == "ROLLOUT_STRATEGY_TYPE_CANARY"
    assert [s["targetTrafficPercent"] for s in started["status"]["steps"]] == [10, 50, 100]
    sent = json.dumps(started)  # the spec the server echoes, with the interval and the gate it was given
    assert '"stepInterval": "30s"' in sent and '"maxRegressionPercent": 15' in sent and "router_latency" in sent
    ep = live.json("show", "roll")["endpoint"]
    names = view.names_of(ep)
    assert names[started["sourceDeploymentId"]] == "blue" and names[started["targetDeploymentId"]] == "green"
    _judged(live, started["id"])

    shown = live.ok("show", "roll").stdout
    assert "Rollout" in shown and f"{started['id']} (canary)" in shown and "blue -> green" in shown
    assert "2/3" in shown and "50%" in shown and "router_latency PASS" in shown and "RUNNING" in shown

    paused = live.ok("rollout", "roll", "--pause", "--reason", "look first")
    assert f"paused rollout {started['id']} of acme/roll" in paused.stderr and "look first" in paused.stdout
    assert live.json("rollout", "roll", "--resume")["rollout"]["state"] == "ROLLOUT_STATE_RUNNING"
    canceled = live.json("rollout", "roll", "--cancel")["rollout"]
    assert canceled["state"] == "ROLLOUT_STATE_CANCELED"
    none = live.run("rollout", "roll", "--promote")
    assert none.exit_code == 4 and "no rollout in progress" in none.stderr

    blue_green = live.json("rollout", "roll", "green", "--source", "blue", "--blue-green")["rollout"]
    assert blue_green["strategy"] == "ROLLOUT_STRATEGY_TYPE_BLUE_GREEN"
    assert live.json("rollout", "roll", "--cancel", "revert")["rollout"]["state"] == "ROLLOUT_STATE_CANCELED"


def test_rollout_refuses_what_does_not_fit_together(live: Live) -> None:
    _deploy(live, "picky", "blue")
    _deploy(live, "picky", "green")
    for args in (
        ("picky",),
        ("picky", "green", "--blue-green", "--rolling"),
        ("picky", "green", "--blue-green", "--interval", "30s"),
        ("picky", "green", "--rolling", "--gate-latency-p95-regression", "10"),
        ("picky", "green", "--pause"),
        ("picky", "--pause", "--cancel"),
        ("picky", "green", "--canary", "ten"),
    ):
        result = live.run("rollout", *args)
        assert result.exit_code == 2, (args, result.output)
    live.ok("split", "picky", "green=1")
    ambiguous = live.run("rollout", "picky", "blue")
    assert ambiguous.exit_code == 0, ambiguous.output  # green is the one other deployment with traffic
    live.ok("rollout", "picky", "--cancel")
    _deploy(live, "picky", "red")
    live.ok("split", "picky", "red=1")
    two = live.run("rollout", "picky", "blue")
    assert two.exit_code == 1 and "name it with --source" in two.stderr


def test_show_lists_experiments_and_events_filter(live: Live) -> None:
    ids = {name: _deploy(live, "lab", name) for name in ("blue", "green", "mirror")}
    ep = live.json("show", "lab")["endpoint"]
    members = [
        {"deploymentId": ids["blue"], "percent": 90, "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"},
        {"deploymentId": ids["green"], "percent": 10, "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"},
    ]
    live.api("POST", f"{P}/endpoints/{ep['id']}/abExperiments", json={"name": "try-green", "members": members})
    shadow = {
        "name": "shadow-rate-0.2",
        "source": {"endpoint": {"sampling": {"uniform": {"rate": 0.2}}}},
        "targets": [{"name": "mirror-target", "targetDeploymentId": ids["mirror"]}],
    }
    live.api("POST", f"{P}/endpoints/{ep['id']}/shadowExperiments", json=shadow)

    shown = live.ok("show", "lab", "--events", "50").stdout
    assert "try-green" in shown and "blue 90% (control), green 10%" in shown
    row = next(line for line in shown.splitlines() if line.startswith("shadow-rate-0.2"))
    assert row.split()[:6] == ["shadow-rate-0.2", "ACTIVE", "uniform", "rate=0.2", "mirror", "0"]
    assert "p95 - vs - live, errors 0/0 vs 0/0" in row
    mirror = next(line for line in shown.splitlines() if line.startswith("mirror "))
    assert mirror.split()[-2:] == ["shadow", "-"]

    events = live.json("events", "lab")
    assert events[0]["type"] == "endpoint.created" and any(e["type"] == "experiment.created" for e in events)
    mine = live.json("events", "lab", "--deployment", "mirror")
    assert mine and {e["deploymentId"] for e in mine} == {ids["mirror"]}
    assert live.json("events", "lab", "--level", "error") == []
    assert "No events." in live.run("events", "lab", "--level", "error").stderr
    assert live.run("events", "lab", "--level", "loud").exit_code == 2


def _judged(live: Live, rollout_id: str) -> None:
    """What the rollout controller writes once step 1 passed its gate (it needs running replicas to)."""

    def step_passed(r: Rollout) -> None:
        first = {**r.steps[0], "state": "ROLLOUT_STEP_STATE_SUCCEEDED"}
        first["metrics"] = [{"name": "router_latency", "verdict": "METRIC_VERDICT_PASS"}]
        second = {**r.steps[1], "state": "ROLLOUT_STEP_STATE_RUNNING"}
        r.steps, r.current_step, r.traffic_percent = [first, second, *r.steps[2:]], 1, 50

    live.services.live.rollouts.driver.write(rollout_id, step_passed)


# --- the layout, from the wire's JSON alone --------------------------------------------------------------
def test_rollout_fields_show_progress_pause_and_conditions() -> None:
    rollout = {
        "id": "rol_1",
        "strategy": "ROLLOUT_STRATEGY_TYPE_BLUE_GREEN",
        "sourceDeploymentId": "dep_a",
        "targetDeploymentId": "dep_b",
        "state": "ROLLOUT_STATE_SYSTEM_PAUSED",
        "currentStep": 0,
        "currentTrafficPercent": 25,
        "pauseInfo": {"reason": "gate breached"},
        "status": {
            "totalSteps": 1,
            "steps": [
                {"stepIndex": 0, "metrics": [{"name": "router_error_rate", "verdict": "METRIC_VERDICT_BREACHED"}]}
            ],
            "conditions": [{"category": "ROLLOUT_FAILURE_CATEGORY_METRIC_BREACH", "message": "p95 up 40%"}],
        },
    }
    fields = dict(view.rollout_fields(rollout, {"dep_a": "blue", "dep_b": "green"}))
    assert fields["rollout"] == "rol_1 (blue-green)" and fields["from -> to"] == "blue -> green"
    assert fields["step"] == "1/1" and fields["target traffic"] == "[#####...............] 25%"
    assert fields["state"] == "SYSTEM_PAUSED" and fields["gates"] == "router_error_rate BREACHED"
    assert fields["paused"] == "gate breached" and fields["condition"] == "METRIC_BREACH: p95 up 40%"
