"""Together 3.1.1's ``tg endpoints`` commands and SDK against a live server (``shared/WIRE-v2.md`` §3, §4, §7-9;
the CLI's request sequences are in ``notes/tg-endpoints-wire.md``): deploy a model onto a new endpoint and an
adapter onto its deployment and chat with both; roll a second model out by canary while a client streams
without one failed request; stop a slow target by its latency gate; split traffic 80/20 in an A/B experiment
within binomial bounds; mirror requests to a shadow deployment whose answers never reach the client; list,
get, update, events, a stale etag and rm.

One server serves the whole module (tiny models, so replicas start in seconds); each test has its own
endpoint, and every replica is stopped after each test. The server adds ``SLOW_S`` of latency before each
request reaches a deployment named ``slow`` (``MODELPORT_FAULT_DELAYS``), which the latency-gate test deploys.

Where the wire spec is silent these tests assume what Together documents, and say so where they do.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import database
from tests.e2e.conftest import Live, server_env
from tests.e2e.test_inference_clients import upload
from tests.support.fakehub import FakeHub
from tests.support.procs import free_port, start_modelport
from tests.support.tinymodels import make_llama

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

V3 = "3.1.1"
KEY = "mp-e2e-bootstrap-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "the capital of france is"}]
ANSWERED_BY = "x-modelport-deployment"  # the id (dep_…) of the deployment that answered a chat request
SLOW_S = 0.4
READY = "DEPLOYMENT_STATE_READY"
COMPLETED, CANCELED = "ROLLOUT_STATE_COMPLETED", "ROLLOUT_STATE_CANCELED"
PAUSED, SYSTEM_PAUSED = "ROLLOUT_STATE_PAUSED", "ROLLOUT_STATE_SYSTEM_PAUSED"
CONTROL, VARIANT = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"


def short(name: str) -> str:
    """A deployment's own name: the CLI only ever reads the last ``/`` segment (Together: slug/endpoint/name)."""
    return name.rsplit("/", 1)[-1]


def weights(endpoint: dict[str, Any]) -> dict[str, float]:
    return {t["deploymentId"]: float(t["weight"]) for t in endpoint["trafficSplit"]}


@dataclass
class Stack:
    """The module's server, its project, the smallest hardware config, and the uploaded models' ids by name."""

    live: Live
    project: str
    config: str
    models: dict[str, str]

    def tg(self, *args: str, json_out: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        flags = ["--project", self.project, *(["--json"] if json_out else [])]
        return self.live.together(V3, *args, *flags, check=check, base_url=self.live.url, program="tg")

    def tg_json(self, *args: str) -> Any:
        return json.loads(self.tg(*args).stdout)

    def sdk(self, body: str) -> Any:
        code = (
            "import json\nimport together\n"
            f"client = together.Together(max_retries=0, project_id={self.project!r})\n{body}"
        )
        return self.live.sdk(V3, code, base_url=self.live.url)

    def api(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """A request to ``/v2/projects/{project}{path}``."""
        url = f"{self.live.url}/v2/projects/{self.project}{path}"
        return httpx.request(method, url, json=body, headers=AUTH, timeout=30)

    def get(self, path: str) -> Any:
        resp = self.api("GET", path)
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def deploy(self, model: str, endpoint: str, name: str, *, weight: float) -> tuple[str, str]:
        """``tg endpoints deploy`` onto a new endpoint or (by its 409 path) an existing one; both ids."""
        out = self.tg_json(
            "endpoints", "deploy", self.models[model], "--endpoint", endpoint, "--deployment-name", name,
            "--config", self.config, "--traffic-weight", f"{weight:g}",
        )  # fmt: skip
        return out["endpoint"]["id"], out["deployment"]["id"]

    def deployment(self, endpoint_id: str, deployment_id: str) -> dict[str, Any]:
        return dict(self.get(f"/endpoints/{endpoint_id}/deployments/{deployment_id}"))

    def wait_state(self, endpoint_id: str, *deployment_ids: str, state: str = READY, timeout: float = 180) -> None:
        """``tg endpoints deploy`` never waits (nothing in the CLI polls): the caller polls the deployment."""
        deadline = time.monotonic() + timeout
        for deployment_id in deployment_ids:
            while (status := self.deployment(endpoint_id, deployment_id)["status"])["state"] != state:
                assert status["state"] != "DEPLOYMENT_STATE_FAILED", status
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{deployment_id} never reached {state}: {status}")
                time.sleep(0.3)

    def wait_rollout(self, endpoint_id: str, rollout_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rollout: dict[str, Any] = self.get(f"/endpoints/{endpoint_id}/rollouts/{rollout_id}")
            if rollout["state"] in states:
                return rollout
            assert rollout["state"] not in {COMPLETED, CANCELED}, rollout  # over, and not as expected
            if time.monotonic() > deadline:
                raise TimeoutError(f"{rollout_id} never reached {states}: {rollout}")
            time.sleep(0.3)

    def chat(self, model: str, *, max_tokens: int = 6, client: httpx.Client | None = None) -> tuple[str, str]:
        """One chat request; (the deployment that answered, the answer)."""
        body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}
        url = f"{self.live.url}/v1/chat/completions"
        resp = client.post(url, json=body) if client else httpx.post(url, json=body, headers=AUTH, timeout=60)
        assert resp.status_code == 200, resp.text
        return resp.headers.get(ANSWERED_BY, ""), resp.json()["choices"][0]["message"]["content"]

    def answered_by(self, model: str, n: int, workers: int = 4) -> Counter[str]:
        """Who answered each of ``n`` one-token requests, ``workers`` at a time."""
        with httpx.Client(headers=AUTH, timeout=60) as client, ThreadPoolExecutor(workers) as pool:
            return Counter(pool.map(lambda _: self.chat(model, max_tokens=1, client=client)[0], range(n)))

    def stop_everything(self) -> None:
        """Scale every deployment to 0/0, so one test's replicas do not slow the next; best effort."""
        try:
            for endpoint in self.get("/endpoints")["data"]:
                for d in endpoint.get("deployments") or []:
                    body = {"autoscaling": {"minReplicas": 0, "maxReplicas": 0}}
                    self.api("PATCH", f"/endpoints/{endpoint['id']}/deployments/{d['id']}?updateMask=autoscaling", body)
        except (AssertionError, httpx.HTTPError, KeyError):
            pass


@dataclass
class Load:
    """Chat requests sent to ``model`` by ``threads`` clients until stopped: who answered each, and every failure.

    Streamed requests count as failed unless they end with ``data: [DONE]`` and carry no error event."""

    url: str
    model: str
    threads: int = 1
    stream: bool = False
    answered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(60)

    def count(self) -> int:
        with self._lock:
            return len(self.answered) + len(self.failures)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} of {n} requests in {timeout} s"
            time.sleep(0.05)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    who = self._one(client)
                except Exception as e:  # every failure is the test's finding; none may escape the thread
                    with self._lock:
                        self.failures.append(repr(e))
                else:
                    with self._lock:
                        self.answered.append(who)

    def _one(self, client: httpx.Client) -> str:
        body = {"model": self.model, "messages": MESSAGES, "max_tokens": 3, "temperature": 0, "stream": self.stream}
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            text = resp.read().decode()
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {text[:500]}")
        if self.stream and (not text.rstrip().endswith("data: [DONE]") or '"error"' in text):
            raise RuntimeError(f"broken stream: {text[-500:]}")
        return resp.headers[ANSWERED_BY]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_lora: Path) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("v2-endpoints")
    hub = FakeHub()
    hub.start(free_port())
    try:
        with database(home) as db_url:
            env = server_env(
                home,
                db_url,
                hub,
                KEY,
                MODELPORT_FAULT_DELAYS=json.dumps({"slow": SLOW_S}),
                # One account holds every replica of the module: room for all of them, whatever the host has.
                MODELPORT_QUOTA_ENDPOINT_SHARE="1",
                MODELPORT_ENDPOINT_MEMORY_BYTES=str(32 * 2**30),
                MODELPORT_ROLLOUT_INTERVAL_S="0.25",
            )
            proc, url = start_modelport(env, home / "server.log")
            try:
                live = Live(url, KEY, proc, env)
                upload(live, hub, "tiny", tiny_llama)
                upload(live, hub, "tiny-v2", make_llama(home / "tiny-v2", seed=3))
                upload(live, hub, "tiny-lora", tiny_lora, model_type="adapter", base_model="tiny")
                yield _stack(live)
            finally:
                proc.stop()
    finally:
        hub.stop()


def _stack(live: Live) -> Stack:
    project = live.get("/v3/whoami")["project"]["id"]
    models = {m["name"].partition("/")[2]: m["id"] for m in live.get(f"/v2/projects/{project}/models")["data"]}
    assert {"tiny", "tiny-v2", "tiny-lora"} <= models.keys(), models
    # Several CPU configurations fit a tiny model, so every command names one (non-interactively the CLI
    # refuses to choose): the smallest, whose config id is ``cr_`` + the hardware id.
    hardware = httpx.get(f"{live.url}/v1/hardware", headers=AUTH).json()["data"]
    smallest = min(hardware, key=lambda h: (h["specs"]["gpu_memory"], h["specs"]["gpu_count"]))["id"]
    configs = live.get(f"/v2/projects/{project}/configs?referenceModelId={models['tiny']}")["data"]
    assert f"cr_{smallest}" in {c["id"] for c in configs}, configs
    return Stack(live, project, f"cr_{smallest}", models)


@pytest.fixture(autouse=True)
def _stop_replicas_after_each_test(stack: Stack) -> Iterator[None]:
    yield
    stack.stop_everything()


def test_deploy_a_base_model_attach_an_adapter_and_chat_with_both(stack: Stack) -> None:
    # By the model's name (whoami's slug, then the project's models), onto a new endpoint.
    out = stack.tg_json(
        "endpoints", "deploy", "devuser/tiny", "--endpoint", "chat-ep", "--deployment-name", "base",
        "--config", stack.config, "--traffic-weight", "1",
    )  # fmt: skip
    endpoint, deployment = out["endpoint"], out["deployment"]
    endpoint_id, base = endpoint["id"], deployment["id"]
    assert endpoint_id.startswith("ep_") and endpoint["name"] == "devuser/chat-ep"
    assert base.startswith("dep_") and short(deployment["name"]) == "base"
    assert deployment["model"].startswith(f"projects/{stack.project}/models/{stack.models['tiny']}")
    assert deployment["config"] == f"projects/{stack.project}/configs/{stack.config}"
    assert (deployment["autoscaling"]["minReplicas"], deployment["autoscaling"]["maxReplicas"]) == (1, 1)
    assert weights(endpoint) == {base: 1.0}  # the CLI's PATCH of the traffic split answered the endpoint
    stack.wait_state(endpoint_id, base)

    # The adapter joins the base model's deployment (its config's adapter_mode is dynamic): none is created.
    attached = stack.tg_json("endpoints", "deploy", "devuser/tiny-lora", "--endpoint", "chat-ep", "--attach-adapter")
    assert attached["deployment"]["id"] == base
    adapter = attached["adapter"]
    assert adapter["id"].startswith("dad_") and adapter["adapterModelId"] == stack.models["tiny-lora"]
    assert [a["id"] for a in stack.get(f"/endpoints/{endpoint_id}/deployments/{base}/adapters")["data"]] == [
        adapter["id"]
    ]
    assert [d["id"] for d in stack.get(f"/endpoints/{endpoint_id}/deployments")["data"]] == [base]

    # Both answer through /v1/chat/completions: the base by the endpoint's name, the adapter by its own
    # model name, which (attached) runs on that deployment rather than serverless.
    by_base, base_answer = stack.chat("devuser/chat-ep")
    by_adapter, adapter_answer = stack.chat("devuser/tiny-lora")
    assert by_base == base == by_adapter
    assert base_answer != adapter_answer
    # Together documents a deployment's qualified name as a model that pins that deployment.
    assert stack.chat("devuser/chat-ep/base") == (base, base_answer)
    got = stack.sdk(
        "chat = client.chat.completions.create(model='devuser/chat-ep', "
        f"messages={MESSAGES!r}, max_tokens=6, temperature=0)\n"
        "print(json.dumps({'content': chat.choices[0].message.content}))"
    )
    assert got["content"] == base_answer

    # `tg endpoints <name>` in text mode renders the deployment with its adapter (a crash there exits 1).
    shown = stack.tg("endpoints", "chat-ep", json_out=False).stdout
    assert "devuser/chat-ep" in shown and "Adapter:" in shown
    assert "devuser/tiny-lora" in shown or stack.models["tiny-lora"] in shown


def test_a_canary_rollout_paused_resumed_and_promoted_while_a_client_streams_without_one_failed_request(
    stack: Stack,
) -> None:
    endpoint_id, blue = stack.deploy("tiny", "canary-ep", "blue", weight=1)
    _, green = stack.deploy("tiny-v2", "canary-ep", "green", weight=0)  # on the endpoint, without live traffic
    stack.wait_state(endpoint_id, blue, green)

    with Load(stack.live.url, "devuser/canary-ep", stream=True) as load:
        load.wait_for(3)
        # The source is inferred: the only other deployment with a weight above 0.
        # Steps after 50% to spare: `--promote` below must find the rollout still running however slowly the
        # CLI starts (two seconds a step; the CLI takes seconds on a machine loaded by the other tests).
        steps = "25,50,60,70,80,90,100"
        rollout = stack.tg_json("endpoints", "rollout", green, "--canary", "--steps", steps, "--interval", "2s")[
            "rollout"
        ]
        rollout_id = rollout["id"]
        assert rollout_id.startswith("rol_")
        assert (rollout["sourceDeploymentId"], rollout["targetDeploymentId"]) == (blue, green)
        assert rollout["strategy"] == "ROLLOUT_STRATEGY_TYPE_CANARY"
        assert rollout["state"] in ("ROLLOUT_STATE_PENDING", "ROLLOUT_STATE_RUNNING")

        # Paused at once by the target's name (well within the first 2 s step), it holds its split past a
        # step's interval...
        paused = stack.tg_json("endpoints", "rollout", green, "--pause")["rollout"]
        assert paused["id"] == rollout_id
        held = stack.wait_rollout(endpoint_id, rollout_id, {PAUSED})
        assert stack.get(f"/endpoints/{endpoint_id}")["activeRolloutId"] == rollout_id
        time.sleep(2.5)
        still = stack.wait_rollout(endpoint_id, rollout_id, {PAUSED})
        assert still.get("currentTrafficPercent") == held.get("currentTrafficPercent")
        # ...and `tg endpoints rollout <endpoint> --resume` finds it by the endpoint's activeRolloutId.
        resumed = stack.tg_json("endpoints", "rollout", endpoint_id, "--resume")["rollout"]
        assert resumed["id"] == rollout_id and resumed["state"] not in (PAUSED, "ROLLOUT_STATE_PAUSING")

        # Once the target has 50%, `--promote` (by the endpoint's name) gives it everything at once.
        deadline = time.monotonic() + 60
        while stack.get(f"/endpoints/{endpoint_id}/rollouts/{rollout_id}").get("currentStep", 0) < 1:
            assert time.monotonic() < deadline, "the rollout never reached its second step"
            time.sleep(0.2)
        promoted = stack.tg_json("endpoints", "rollout", "canary-ep", "--promote")["rollout"]
        assert promoted["id"] == rollout_id
        done = stack.wait_rollout(endpoint_id, rollout_id, {COMPLETED})
        at_completion = load.count()
        load.wait_for(at_completion + 5)

    assert not load.failures, load.failures
    assert {blue, green} <= set(load.answered), Counter(load.answered)
    # Every request that started once the rollout had completed went to the target.
    assert set(load.answered[at_completion + 1 :]) == {green}, load.answered[at_completion:]
    assert done.get("currentTrafficPercent", 100) == 100

    endpoint = stack.get(f"/endpoints/{endpoint_id}")
    assert not endpoint.get("activeRolloutId")
    assert weights(endpoint).get(green, 0) > 0 and weights(endpoint).get(blue, 0) == 0
    # --final-source-replicas defaults to 0: the source drains and stops (Together's documented default).
    stack.wait_state(endpoint_id, blue, state="DEPLOYMENT_STATE_STOPPED", timeout=60)
    # A finished rollout is no longer the endpoint's active one: the CLI finds it by listing rollouts.
    assert stack.tg_json("endpoints", rollout_id)["state"] == COMPLETED


def test_a_rollout_whose_target_answers_slowly_is_stopped_by_its_latency_gate(stack: Stack) -> None:
    endpoint_id, fast = stack.deploy("tiny", "gate-ep", "fast", weight=1)
    _, slow = stack.deploy("tiny", "gate-ep", "slow", weight=0)  # the same model, SLOW_S later on every request
    stack.wait_state(endpoint_id, fast, slow)

    with Load(stack.live.url, "devuser/gate-ep", threads=2) as load:
        load.wait_for(4)
        rollout = stack.tg_json(
            "endpoints", "rollout", slow, "--canary", "--steps", "50,100", "--interval", "2s",
            "--metric", "router_latency", "--metric-stat", "p95", "--metric-direction", "higher-is-worse",
            "--metric-max-regression", "10", "--metric-window", "5s",
        )["rollout"]  # fmt: skip
        # Together stretches the step interval over the gate's window; the gate then compares the target's
        # p95 with the source's over the last 5 s and stops the rollout, either way.
        stopped = stack.wait_rollout(endpoint_id, rollout["id"], {SYSTEM_PAUSED, CANCELED})

    assert not load.failures, load.failures
    assert slow in load.answered  # the canary step did send the target its share first
    status = stopped["status"]
    conditions = [c for c in (status.get("condition"), *(status.get("conditions") or [])) if c]
    assert any("router_latency" in json.dumps(c) for c in conditions), stopped
    assert "METRIC_VERDICT_BREACHED" in json.dumps(stopped), stopped

    # The target's share is back at 0, and so it answers nothing.
    endpoint = stack.get(f"/endpoints/{endpoint_id}")
    assert weights(endpoint).get(slow, 0) == 0 and weights(endpoint).get(fast, 0) > 0
    summary = next(d for d in endpoint["deployments"] if d["id"] == slow)
    assert summary.get("estimatedEffectiveTrafficShare", 0) == 0
    assert stack.answered_by("devuser/gate-ep", 12) == Counter({fast: 12})

    # `tg endpoints <rollout>` says why: it renders status.condition (singular) and the failed step's metrics.
    assert "router_latency" in stack.tg("endpoints", rollout["id"], json_out=False).stdout
    if stopped["state"] == SYSTEM_PAUSED:  # still the endpoint's active rollout: cancel it by the endpoint's name
        canceled = stack.tg_json("endpoints", "rollout", "gate-ep", "--cancel")["rollout"]
        assert canceled["id"] == rollout["id"]
        stack.wait_rollout(endpoint_id, rollout["id"], {CANCELED})
        assert weights(stack.get(f"/endpoints/{endpoint_id}")).get(slow, 0) == 0


def test_an_ab_split_of_80_20_routes_within_binomial_bounds(stack: Stack) -> None:
    endpoint_id, control = stack.deploy("tiny", "split-ep", "control", weight=1)
    out = stack.tg_json(
        "endpoints", "ab", stack.models["tiny-v2"], "--control", control, "--percent", "20", "--config", stack.config
    )
    variant, experiment = out["deployment"]["id"], out["ab_experiment"]
    assert re.fullmatch(r"devuser-tiny-v2-[0-9a-f]{8}", short(out["deployment"]["name"])), out["deployment"]
    assert experiment["id"].startswith("abx_") and experiment["name"].endswith("control-ab")
    members = {m["deploymentId"]: (m["role"], m["percent"]) for m in experiment["members"]}
    assert members == {control: (CONTROL, 80), variant: (VARIANT, 20)}
    assert weights(stack.get(f"/endpoints/{endpoint_id}")).get(variant, 0) == 0  # it splits the control's share
    stack.wait_state(endpoint_id, control, variant)

    n, p = 300, 0.2
    counts = stack.answered_by("devuser/split-ep", n)
    assert set(counts) == {control, variant}, counts
    # Binomial: 4 standard deviations either side (a false alarm about once in 16,000 runs).
    assert abs(counts[variant] - n * p) <= 4 * math.sqrt(n * p * (1 - p)), counts

    shown = stack.tg_json("endpoints", "split-ep")
    assert [x["id"] for x in shown["ab"]] == [experiment["id"]] and shown["shadows"] == []
    moved = stack.tg_json("endpoints", "update", variant, "--ab-percent", "50")["ab_experiment"]
    assert {m["deploymentId"]: m["percent"] for m in moved["members"]} == {control: 50, variant: 50}

    # rm of a member leaves the experiment first (deleted: one member would remain). Together refuses to
    # delete a running deployment: the CLI then scales it to 0/0, exits 1 and asks for a retry once stopped.
    first = stack.tg("endpoints", "rm", variant, check=False)
    removed = json.loads(first.stdout)
    if first.returncode != 0:
        assert removed["status"] == "scaling_down", removed
        stack.wait_state(endpoint_id, variant, state="DEPLOYMENT_STATE_STOPPED", timeout=60)
        removed = stack.tg_json("endpoints", "rm", variant)
    assert (removed["id"], removed["type"]) == (variant, "deployment")
    assert stack.get(f"/endpoints/{endpoint_id}/abExperiments")["data"] == []
    assert stack.api("GET", f"/endpoints/{endpoint_id}/deployments/{variant}").status_code == 404
    assert stack.answered_by("devuser/split-ep", 6) == Counter({control: 6})


def mirrored(stack: Stack, endpoint_id: str, deployment_id: str) -> tuple[int | None, int]:
    """Requests copied to a shadow deployment: its target's ``mirroredRequests`` (None when the server does not
    count them there), and the number of its ``shadow.compared`` events (one per so many copies)."""
    listed = stack.get(f"/endpoints/{endpoint_id}/shadowExperiments?includeTargets=true")["data"]
    targets = [t for x in listed for t in x.get("targets") or [] if t["targetDeploymentId"] == deployment_id]
    counts = [int(t["mirroredRequests"]) for t in targets if t.get("mirroredRequests") is not None]
    query = f"types=shadow.compared&deploymentIds={deployment_id}&limit=1000"
    return (max(counts) if counts else None), len(stack.get(f"/endpoints/{endpoint_id}/events?{query}")["data"])


def test_a_shadow_target_receives_mirrored_requests_and_never_answers(stack: Stack) -> None:
    endpoint_id, live = stack.deploy("tiny", "mirror-ep", "live", weight=1)
    out = stack.tg_json(
        "endpoints", "shadow", stack.models["tiny-v2"], "--endpoint", "mirror-ep", "--rate", "1.0",
        "--config", stack.config, "--name", "mirror",
    )  # fmt: skip
    shadow, experiment = out["deployment"]["id"], out["shadow_experiment"]
    assert short(out["deployment"]["name"]) == "mirror"
    assert experiment["id"].startswith("exp_") and experiment["name"] == "shadow-rate-1.0"
    assert experiment["source"]["endpoint"]["sampling"]["uniform"]["rate"] == 1.0
    stack.wait_state(endpoint_id, live, shadow)
    counted_before, events_before = mirrored(stack, endpoint_id, shadow)

    n = 24
    assert stack.answered_by("devuser/mirror-ep", n, workers=2) == Counter({live: n})  # never the shadow's answer

    def grown() -> bool:
        counted, events = mirrored(stack, endpoint_id, shadow)
        return events > events_before if counted is None else counted >= (counted_before or 0) + n // 2

    deadline = time.monotonic() + 30  # copies run after their originals answered
    while not grown() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert grown(), ((counted_before, events_before), mirrored(stack, endpoint_id, shadow))
    assert weights(stack.get(f"/endpoints/{endpoint_id}")).get(shadow, 0) == 0

    # Text mode resolves each target among the endpoint's deployments and shows the sampling rate.
    shown = stack.tg("endpoints", "mirror-ep", json_out=False).stdout
    assert "mirror" in shown and "shadowing 100% of endpoint traffic" in shown
    removed = stack.tg_json("endpoints", "rm", experiment["id"])
    assert (removed["id"], removed["type"]) == (experiment["id"], "shadow_experiment")
    assert stack.get(f"/endpoints/{endpoint_id}/shadowExperiments")["data"] == []


def test_list_get_update_events_a_stale_etag_and_rm_force(stack: Stack) -> None:
    # Text mode: the preview (config selectors, instance-type price), then the endpoint's details.
    deployed = stack.tg(
        "endpoints", "deploy", stack.models["tiny"], "--endpoint", "ops-ep", "--deployment-name", "ops",
        "--config", stack.config, "--traffic-weight", "1", json_out=False,
    )  # fmt: skip
    assert "Model deployed to endpoint devuser/ops-ep" in deployed.stdout, deployed.stdout

    got = stack.tg_json("endpoints", "ops-ep")
    endpoint_id, [summary] = got["id"], got["deployments"]
    dep = summary["id"]
    assert got["name"] == "devuser/ops-ep" and weights(got) == {dep: 1.0}
    assert (got["ab"], got["shadows"], got["rollout"]) == ([], [], None)
    assert stack.tg_json("endpoints", dep)["id"] == dep
    assert stack.tg_json("endpoints", "ops")["id"] == dep  # not an endpoint's name: a deployment's
    stack.wait_state(endpoint_id, dep)

    # Without --project the launcher takes the key's project from /v3/whoami.
    listed = stack.live.together(V3, "endpoints", "ls", "--json", base_url=stack.live.url, program="tg")
    assert endpoint_id in {e["id"] for e in json.loads(listed.stdout)["data"]}
    assert "ops-ep" in stack.tg("endpoints", "ls", json_out=False).stdout

    updated = stack.tg_json("endpoints", "update", dep, "--min-replicas", "1", "--max-replicas", "2")
    assert updated["id"] == dep
    assert (updated["autoscaling"]["minReplicas"], updated["autoscaling"]["maxReplicas"]) == (1, 2)
    assert stack.deployment(endpoint_id, dep)["autoscaling"]["maxReplicas"] == 2

    events = stack.tg_json("endpoints", "events", "ops-ep")["data"]
    assert events and all({"id", "createdAt", "type", "endpointId"} <= e.keys() for e in events), events
    # Assumed, as Together does: filtering by deployment keeps that deployment's events (its replica started).
    mine = stack.tg_json("endpoints", "events", endpoint_id, "--deployment-ids", dep, "--min-level", "info")["data"]
    assert mine and all(e.get("deploymentId") == dep for e in mine), mine
    assert "ops" in stack.tg("endpoints", "events", endpoint_id, json_out=False).stdout

    # Optimistic concurrency: the etag in a PATCH body must be the current one; a stale one is a real
    # conflict, which the SDK must not retry.
    path = f"/endpoints/{endpoint_id}/deployments/{dep}?updateMask=autoscaling"
    stale_etag = stack.deployment(endpoint_id, dep)["etag"]
    fresh = stack.api("PATCH", path, {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}, "etag": stale_etag})
    assert fresh.status_code == 200 and fresh.json()["etag"] != stale_etag, fresh.text
    stale = stack.api("PATCH", path, {"autoscaling": {"minReplicas": 1, "maxReplicas": 2}, "etag": stale_etag})
    assert stale.status_code == 409 and stale.headers.get("x-should-retry") == "false", (stale.headers, stale.text)
    assert stale.json()["error"]["message"]
    etag = stack.get(f"/endpoints/{endpoint_id}")["etag"]
    split = {"trafficSplit": [{"deploymentId": dep, "weight": 2.0}], "etag": etag}
    assert stack.api("PATCH", f"/endpoints/{endpoint_id}?updateMask=trafficSplit", split).status_code == 200
    again = stack.api("PATCH", f"/endpoints/{endpoint_id}?updateMask=trafficSplit", split)
    assert again.status_code == 409 and again.headers.get("x-should-retry") == "false", again.text
    conflict = stack.sdk(
        "try:\n"
        f"    client.endpoints.deployments.update({dep!r}, endpoint_id={endpoint_id!r}, update_mask='autoscaling',\n"
        f"        autoscaling={{'min_replicas': 1, 'max_replicas': 2}}, etag={stale_etag!r})\n"
        "except together.ConflictError as e:\n"
        "    print(json.dumps({'status': e.status_code}))\n"
        "else:\n"
        "    print(json.dumps({'status': 200}))\n"
    )
    assert conflict == {"status": 409}

    # rm of an endpoint that still has a deployment is refused, naming it; --force clears the traffic
    # split, scales and deletes every deployment, then the endpoint.
    blocked = stack.tg("endpoints", "rm", endpoint_id, check=False)
    assert blocked.returncode == 1
    assert [d["id"] for d in json.loads(blocked.stdout)["deployments"]] == [dep]
    removed = stack.tg_json("endpoints", "rm", endpoint_id, "--force")
    assert (removed["id"], removed["type"]) == (endpoint_id, "endpoint")
    assert stack.api("GET", f"/endpoints/{endpoint_id}").status_code == 404
    assert stack.api("GET", f"/endpoints/{endpoint_id}/deployments/{dep}").status_code == 404
    assert endpoint_id not in {e["id"] for e in stack.tg_json("endpoints", "ls")["data"]}
