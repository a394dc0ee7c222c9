"""Dedicated endpoints on a real three-node Ray cluster, through the together and modelport CLIs."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Live
from tests.e2e.test_endpoints import wait_state
from tests.e2e.test_inference_clients import upload
from tests.onray.conftest import KEY, MESSAGES, Asking, Store, chat, ray_env
from tests.support.fakehub import FakeHub
from tests.support.procs import modelport_exe, start_modelport
from tests.support.raycluster import RayCluster, wait_for

TIMINGS: dict[str, float] = {}


def modelport(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"MODELPORT_BASE_URL": live.url, "MODELPORT_API_KEY": live.key, "COLUMNS": "200", "NO_COLOR": "1"}
    out = subprocess.run([modelport_exe(), *args], env={**live.env, **env}, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"modelport {args}: {out.stdout}\n{out.stderr}"
    return out


def first_token_s(live: Live, model: str) -> float:
    """Seconds until the first streamed token of a chat with ``model``."""
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(  # greedy: a random-weight model sampling EOS first has no token
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
            return time.monotonic() - started
    raise AssertionError("no token came")


def nodes_of(live: Live, endpoint: str) -> dict[int, str]:
    """The node each replica (by index) last answered on, from the endpoint's events (oldest first):
    ``"<label>: replica <i> answers, on <node>"``."""
    events = json.loads(modelport(live, "endpoints", "events", endpoint, "--json").stdout)
    ready = [e["message"] for e in events if e["type"] == "deployment.replica_ready"]
    nodes = {}
    for message in ready:
        head, node = message.rsplit(" on ", 1)
        nodes[int(head.rsplit(" replica ", 1)[1].split()[0])] = node
    return nodes


def replica_actors(cluster: RayCluster, endpoint_id: str) -> list[str]:
    return [a for a in cluster.actors() if a.startswith(f"replica.{endpoint_id}.")]


def test_an_endpoint_on_the_cluster_spreads_its_replicas_and_stops(
    ray_live: Live, hub: FakeHub, tiny_llama: Path, cluster: RayCluster
) -> None:
    upload(ray_live, hub, "tiny", tiny_llama)
    hardware = json.loads(ray_live.together("2.42.0", "endpoints", "hardware", "--json").stdout)
    # The cluster's capacity, not this host's: the largest worker has 2 CPUs and 5 GiB for replicas.
    assert {"1x_cpu_2gb", "2x_cpu_5gb"} <= {h["id"] for h in hardware}, hardware
    started = time.monotonic()
    created = ray_live.together(
        "2.42.0", "endpoints", "create", "--model", "devuser/tiny", "--hardware", "1x_cpu_2gb",
        "--min-replicas", "2", "--max-replicas", "2", "--wait", "--json",
    )  # fmt: skip
    endpoint = json.loads(created.stdout)
    assert endpoint["state"] == "STARTED"
    TIMINGS["ray: create to first token (s)"] = time.monotonic() - started + first_token_s(ray_live, endpoint["name"])

    # One replica on each worker (SPREAD), each an actor of the cluster, and both answer.
    assert len(set(nodes_of(ray_live, endpoint["name"]).values())) == 2
    assert len(replica_actors(cluster, endpoint["id"])) == 2
    answers = {chat(ray_live, endpoint["name"]) for _ in range(4)}
    assert len(answers) == 1 and answers != {""}
    # The model reached each node from the blob store, into that node's cache; never from this server's disk.
    assert sorted(p.parents[2].name for p in cluster.root.glob("cache/worker*/models/*/config.json")) == [
        "worker1",
        "worker2",
    ]

    modelport(ray_live, "endpoints", "stop", endpoint["name"])
    wait_state(ray_live, endpoint["id"], "STOPPED", timeout=60)
    wait_for(lambda: not replica_actors(cluster, endpoint["id"]), 30, "the replicas' actors ending")
    modelport(ray_live, "endpoints", "start", endpoint["name"])
    wait_state(ray_live, endpoint["id"], "STARTED", timeout=120)
    assert chat(ray_live, endpoint["name"]) in answers
    ray_live.together("2.42.0", "endpoints", "delete", endpoint["id"])
    wait_for(lambda: not replica_actors(cluster, endpoint["id"]), 30, "the deleted endpoint's actors ending")


def test_a_killed_node_s_replica_comes_back_on_another_node(
    ray_live: Live, hub: FakeHub, tiny_llama: Path, cluster: RayCluster
) -> None:
    upload(ray_live, hub, "tiny", tiny_llama)
    auth = {"Authorization": f"Bearer {ray_live.key}"}
    body = {"model": "devuser/tiny", "hardware": "1x_cpu_2gb", "min_replicas": 2, "max_replicas": 2}
    endpoint = httpx.post(f"{ray_live.url}/v1/endpoints", json=body, headers=auth, timeout=30).json()
    wait_state(ray_live, endpoint["id"], "STARTED", timeout=180)
    expected = chat(ray_live, endpoint["name"])
    victim = cluster.workers[0]

    with Asking(ray_live, endpoint["name"], expected) as asking:
        try:
            killed = time.monotonic()
            cluster.kill_node(victim)
            # The deployment shows its loss (STARTING while its replica restarts), then is whole again.
            wait_for(
                lambda: ray_live.get(f"/v1/endpoints/{endpoint['id']}")["state"] == "STARTING", 60, "the loss showing"
            )
            wait_state(ray_live, endpoint["id"], "STARTED", timeout=180)
            TIMINGS["ray: replica back after a node loss (s)"] = time.monotonic() - killed
            before = asking.served
            wait_for(lambda: asking.served > before + 3, 30, "requests served after the loss")
        finally:
            cluster.add_worker()  # the next tests' cluster has two workers again
    assert not asking.failures, asking.failures
    events = json.loads(modelport(ray_live, "endpoints", "events", endpoint["name"], "--json").stdout)
    lost = [e["message"] for e in events if e["type"] == "deployment.starting"]
    assert lost, events
    # Both replicas, the one that survived and the one that came back, now on the surviving worker.
    assert len(set(nodes_of(ray_live, endpoint["name"]).values())) == 1


def test_replicas_scale_up_under_load_and_back_down_to_the_minimum(
    ray_live: Live, hub: FakeHub, tiny_llama: Path, cluster: RayCluster
) -> None:
    upload(ray_live, hub, "tiny", tiny_llama)
    project = ray_live.get("/v3/whoami")["project"]["id"]
    p = f"{ray_live.url}/v2/projects/{project}"
    auth = {"Authorization": f"Bearer {ray_live.key}"}
    model = httpx.get(f"{p}/models/devuser/tiny", headers=auth).json()
    ep = httpx.post(f"{p}/endpoints", json={"name": "auto"}, headers=auth).json()
    scaling = {"minReplicas": 1, "maxReplicas": 2, "scaleUpWindow": "0s", "scaleDownWindow": "3s"}
    body = {
        "name": "one",
        "model": f"projects/x/models/{model['id']}",
        "config": "projects/x/configs/cr_1x_cpu_2gb",
        "autoscaling": scaling,
        "maxConcurrentRequestsPerReplica": "1",
    }
    dep = httpx.post(f"{p}/endpoints/{ep['id']}/deployments", json=body, headers=auth, timeout=30)
    assert dep.status_code == 200, dep.text
    deployment = dep.json()["id"]

    def replicas() -> int:
        got = httpx.get(f"{p}/endpoints/{ep['id']}/deployments/one", headers=auth).json()
        return int(got.get("status", {}).get("readyReplicas") or 0)

    wait_for(lambda: replicas() == 1, 180, "the first replica")
    stop = threading.Event()

    def stream() -> None:  # long answers, several at once: more in flight than one replica takes
        client = openai.OpenAI(base_url=f"{ray_live.url}/v1", api_key=ray_live.key, max_retries=0)
        while not stop.is_set():
            try:
                client.chat.completions.create(model="devuser/auto", messages=MESSAGES, max_tokens=64)  # type: ignore[arg-type]
            except openai.APIError:
                time.sleep(0.1)

    load = [threading.Thread(target=stream) for _ in range(3)]
    for t in load:
        t.start()
    try:
        wait_for(lambda: replicas() == 2, 180, "a second replica under load")
    finally:
        stop.set()
        for t in load:
            t.join(60)
    wait_for(lambda: replicas() == 1, 120, "back down to the minimum")
    events = httpx.get(f"{p}/endpoints/{ep['id']}/events", params={"types": "deployment.scaled"}, headers=auth)
    moves = [e["message"].split(": ")[1].split(" (")[0] for e in events.json()["data"]]
    assert "1 -> 2 replicas" in moves and "2 -> 1 replicas" in moves, moves
    assert deployment.startswith("dep_")


def test_two_servers_one_controller_and_a_takeover_that_adopts_the_replicas(
    tmp_path: Path, hub: FakeHub, tiny_llama: Path, cluster: RayCluster, store: Store
) -> None:
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    env = ray_env(tmp_path / "a", db_url, hub, cluster, store)
    first, first_url = start_modelport(env, tmp_path / "a.log")
    env_b = {**env, "MODELPORT_DATA_DIR": str(tmp_path / "b" / "data")}
    second, second_url = start_modelport(env_b, tmp_path / "b.log")
    a, b = Live(first_url, KEY, first, env), Live(second_url, KEY, second, env_b)
    try:
        upload(a, hub, "tiny", tiny_llama)
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "devuser/tiny", "hardware": "1x_cpu_2gb"}
        endpoint = httpx.post(f"{a.url}/v1/endpoints", json=body, headers=auth, timeout=30).json()
        wait_state(a, endpoint["id"], "STARTED", timeout=180)
        (actor,) = replica_actors(cluster, endpoint["id"])  # one replica, not one per server
        # Either server routes to it.
        answer = chat(a, endpoint["name"])
        assert wait_for(lambda: _try_chat(b, endpoint["name"]), 30, "the other server routing") == answer

        holder = _lease_holder(tmp_path / "shared.db")
        controller, follower = (a, b) if str(first.popen.pid) in holder.split(":")[1] else (b, a)
        controller.proc.kill9()  # no release: the lease must run out
        wait_for(lambda: _lease_holder(tmp_path / "shared.db") != holder, 30, "the other server taking the lease")
        time.sleep(3)  # a pass or two of the new controller
        assert replica_actors(cluster, endpoint["id"]) == [actor]  # adopted, not launched again
        assert chat(follower, endpoint["name"]) == answer
        assert follower.get(f"/v1/endpoints/{endpoint['id']}")["state"] == "STARTED"
    finally:
        first.stop()
        second.stop()
        cluster.kill_actors()


def _try_chat(live: Live, model: str) -> str:
    try:
        return chat(live, model)
    except openai.APIError:
        return ""


def _lease_holder(db: Path) -> str:
    import sqlite3

    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = 'controller'").fetchone()
    return str(row[0]) if row else ""


def test_time_from_create_to_first_token_on_the_cluster_and_on_this_host(
    tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path, ray_live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a target (timings are never asserted): the figures, measured in the same run, for the docs."""
    from tests.e2e.conftest import server_env

    env = server_env(tmp_path / "local", db_url.replace(".db", "-local.db"), hub, KEY)
    proc, url = start_modelport(env, tmp_path / "local.log")
    local = Live(url, KEY, proc, env)
    try:
        for live, label in ((local, "local"), (ray_live, "ray")):
            upload(live, hub, "tiny", tiny_llama)
            auth = {"Authorization": f"Bearer {KEY}"}
            started = time.monotonic()
            body = {"model": "devuser/tiny", "hardware": "1x_cpu_2gb"}
            endpoint = httpx.post(f"{live.url}/v1/endpoints", json=body, headers=auth, timeout=30).json()
            wait_state(live, endpoint["id"], "STARTED", timeout=180)
            TIMINGS[f"{label}: create to first token (s)"] = (
                time.monotonic() - started + first_token_s(live, endpoint["name"])
            )
    finally:
        proc.stop()
    with capsys.disabled():
        print("\n" + "\n".join(f"  {k}: {v:.2f}" for k, v in sorted(TIMINGS.items())))
