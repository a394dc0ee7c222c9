"""The console's endpoints: the list shows every endpoint (v1 ones too) with its deployments and split, and
an endpoint's page shows its deployments, traffic, rollout progress, experiments and events.

The supervisor is not running (``supervise=False``): deployments stay PENDING, which is all a page needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.endpoints.hardware import GIB
from modelport.settings import Settings
from modelport.storage.db.tables import Rollout
from tests.api.test_web_pages import signed_in
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of

P = "/v2/projects/null"


class Console:
    def __init__(self, client: TestClient, alice: str, bob: str) -> None:
        self.client, self.alice, self.bob = client, alice, bob
        self.auth = {"Authorization": f"Bearer {alice}"}

    def api(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.client.request(method, path, headers=self.auth, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def endpoint(self, name: str, *deployments: str) -> dict[str, Any]:
        """A v2 endpoint with these deployments of ``alice/base`` (the first takes all the traffic)."""
        ep = self.api("POST", f"{P}/endpoints", json={"name": name})
        for label in deployments:
            body = {"name": label, "modelId": "alice/base", "configId": "cr_1x_cpu_2gb", "autoscaling": {}}
            self.api("POST", f"{P}/endpoints/{ep['id']}/deployments", json=body)
        return dict(self.api("GET", f"{P}/endpoints/{ep['id']}"))

    def split(self, ep: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
        ids = {d["name"].rpartition("/")[2]: d["id"] for d in ep["deployments"]}
        split = [{"deploymentId": ids[n], "weight": w} for n, w in weights.items()]
        body = {"etag": ep["etag"], "trafficSplit": split}
        return dict(self.api("PATCH", f"{P}/endpoints/{ep['id']}", params={"updateMask": "trafficSplit"}, json=body))


@pytest.fixture
def console(settings: Settings, hub: FakeHub, tiny_llama: Path) -> Iterator[Console]:
    settings = settings.model_copy(update={"endpoint_memory_bytes": 64 * GIB, "quota_endpoint_share": 1.0})
    app = create_app(settings, run_workers=False, supervise=False)
    with TestClient(app, follow_redirects=False) as client:
        accounts = app.state.services.accounts
        console = Console(client, accounts.create_key("alice"), accounts.create_key("bob"))
        hub.add("web/v2-base", files_of(tiny_llama))
        console.api("POST", "/v1/models", json={"model_name": "base", "model_source": "web/v2-base"})
        run_all_jobs(app.state.services)
        yield console


def _row(html: str, name: str) -> str:
    match = re.search(rf'<tr data-endpoint="{re.escape(name)}">(.*?)</tr>', html, re.S)
    assert match, f"no row for {name}"
    return match.group(1)


def test_the_list_shows_every_endpoint_with_its_deployments_and_split(console: Console) -> None:
    v1 = console.api("POST", "/v1/endpoints", json={"model": "alice/base", "hardware": "1x_cpu_2gb"})
    console.split(console.endpoint("chat", "blue", "green"), {"blue": 3, "green": 1})
    console.endpoint("empty")
    signed_in(console.client, console.alice)
    html = console.client.get("/endpoints").text

    chat = _row(html, "alice/chat")
    assert '<a href="/endpoints/alice/chat">alice/chat</a>' in chat
    assert "<td>2</td>" in chat and "blue 75%, green 25%" in chat
    assert 'class="badge pending">PENDING (2)<' in chat and "Manage" in chat and "Stop " not in chat
    # A v1 endpoint is an endpoint of one deployment: the list still starts, stops and deletes it.
    single = _row(html, v1["name"])
    assert "<td>1</td>" in single and f'aria-label="Stop {v1["name"]}"' in single
    assert f'action="/endpoints/{v1["name"]}/stop"' in single and '<a href="/models/alice/base">' in single
    assert "no deployments" in _row(html, "alice/empty")
    assert "<caption" in html and 'scope="col"' in html
    # The playground offers the endpoint (split by its weights) and each deployment (pinned) to chat with.
    playground = console.client.get("/playground?model=alice/chat").text
    assert re.search(r'<option value="alice/chat" data-context="\d+" selected>', playground), playground
    assert re.search(r'<option value="alice/chat/blue" data-context="\d+" >', playground)


def test_an_endpoints_page_shows_deployments_split_and_events(console: Console) -> None:
    ep = console.split(console.endpoint("chat", "blue", "green"), {"blue": 3, "green": 1})
    signed_in(console.client, console.alice)
    html = console.client.get("/endpoints/alice/chat").text
    assert "<h1>alice/chat</h1>" in html
    blue = re.search(r'<tr data-deployment="blue">(.*?)</tr>', html, re.S)
    assert blue is not None
    assert '<a href="/models/alice/base">alice/base</a>@1' in blue.group(1)  # the revision by its number
    assert "1x_cpu_2gb" in blue.group(1) and "PENDING" in blue.group(1) and "<td>3</td>" in blue.group(1)
    assert 'name="next" value="/endpoints/alice/chat"' in blue.group(1)
    assert 'value="75.0" aria-label="Share of the traffic for blue"' in html
    assert 'value="25.0" aria-label="Share of the traffic for green"' in html
    # Events, newest first.
    assert html.index("endpoint.traffic_changed") < html.index("deployment.created") < html.index("endpoint.created")
    assert "None: <code>modelport endpoints rollout alice/chat DEPLOYMENT</code>" in html
    # By its bare name or its id too; another account's or a missing one is not found.
    assert "<h1>alice/chat</h1>" in console.client.get("/endpoints/chat").text
    assert "<h1>alice/chat</h1>" in console.client.get(f"/endpoints/{ep['id']}").text
    assert console.client.get("/endpoints/alice/nope").status_code == 404
    signed_in(console.client, console.bob)
    assert console.client.get("/endpoints/alice/chat").status_code == 404


def test_a_deployment_is_stopped_and_deleted_from_its_endpoints_page(console: Console) -> None:
    console.split(console.endpoint("svc", "blue", "green"), {"blue": 1, "green": 1})
    csrf = signed_in(console.client, console.alice)
    form = {"csrf_token": csrf, "next": "/endpoints/alice/svc"}
    # A running deployment is not deleted: traffic would point at nothing.
    refused = console.client.post("/endpoints/alice/svc/green/delete", data=form)
    assert refused.status_code == 409 and "scale it to 0" in refused.text
    stopped = console.client.post("/endpoints/alice/svc/green/stop", data=form)
    assert stopped.status_code == 303 and stopped.headers["location"] == "/endpoints/alice/svc"
    assert console.client.post("/endpoints/alice/svc/green/delete", data=form).status_code == 303
    html = console.client.get("/endpoints/alice/svc").text
    assert 'data-deployment="green"' not in html and 'data-deployment="blue"' in html
    away = console.client.post("/endpoints/alice/svc/blue/stop", data=form | {"next": "https://evil.example/"})
    assert away.headers["location"] == "/models"


def test_the_rollout_shows_its_progress_and_the_experiments_their_members(console: Console) -> None:
    ep = console.endpoint("ab", "blue", "green", "mirror")
    ids = {d["name"].rpartition("/")[2]: d["id"] for d in ep["deployments"]}
    ep = console.split(ep, {"blue": 1, "green": 0})
    rollout = console.api(
        "POST",
        f"{P}/endpoints/{ep['id']}/rollouts",
        json={"targetDeploymentId": ids["green"], "canary": {"steps": [{"traffic": p} for p in (10, 50, 100)]}},
    )
    console.api("POST", f"{P}/endpoints/{ep['id']}/rollouts/{rollout['id']}/start", content=b"")
    _judged(console, rollout["id"])
    members = [
        {"deploymentId": ids["blue"], "percent": 90, "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"},
        {"deploymentId": ids["green"], "percent": 10, "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"},
    ]
    console.api("POST", f"{P}/endpoints/{ep['id']}/abExperiments", json={"name": "try-green", "members": members})
    shadow = {
        "name": "shadow-rate-0.2",
        "source": {"endpoint": {"sampling": {"uniform": {"rate": 0.2}}}},
        "targets": [{"name": "mirror-target", "targetDeploymentId": ids["mirror"]}],
    }
    console.api("POST", f"{P}/endpoints/{ep['id']}/shadowExperiments", json=shadow)
    signed_in(console.client, console.alice)
    html = console.client.get("/endpoints/alice/ab").text

    assert '<h2 id="rollout">Rollout</h2>' in html and "(canary)" in html and "blue → green" in html
    assert '<span class="badge running">RUNNING</span>' in html and "<dd>2 of 3</dd>" in html
    assert '<progress id="rollout-bar" max="100" value="50">' in html and "green gets 50% of the traffic" in html
    assert 'router_latency <span class="badge pass">PASS</span>' in html
    assert '<tr aria-current="step">' in html
    assert "blue 90% (control), green 10%" in html
    assert "uniform rate 0.2" in html and "mirror" in html and "p95 - vs - live" in html
    mirror = re.search(r'<tr data-deployment="mirror">(.*?)</tr>', html, re.S)
    assert mirror is not None and "<td>shadow</td>" in mirror.group(1)

    console.api("POST", f"{P}/endpoints/{ep['id']}/rollouts/{rollout['id']}/cancel", json={"reason": "enough"})
    html = console.client.get("/endpoints/alice/ab").text
    assert '<h2 id="rollout">Last rollout</h2>' in html and '<span class="badge canceled">CANCELED</span>' in html
    assert "enough" in html and 'aria-current="step"' not in html


def _judged(console: Console, rollout_id: str) -> None:
    """What the rollout controller writes once step 1 passed its gate (it needs running replicas to)."""

    def step_passed(r: Rollout) -> None:
        first = {**r.steps[0], "state": "ROLLOUT_STEP_STATE_SUCCEEDED"}
        first["metrics"] = [{"name": "router_latency", "verdict": "METRIC_VERDICT_PASS"}]
        second = {**r.steps[1], "state": "ROLLOUT_STEP_STATE_RUNNING"}
        r.steps, r.current_step, r.traffic_percent = [first, second, *r.steps[2:]], 1, 50

    services = console.client.app.state.services  # type: ignore[attr-defined]
    services.live.rollouts.driver.write(rollout_id, step_passed)
