"""A Ray head node that goes away: the cluster's endpoints report ERROR with the reason, the rest answers.

A cluster of its own (a head and one worker): this test ends it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.e2e.conftest import Live
from tests.e2e.test_endpoints import wait_state
from tests.e2e.test_inference_clients import upload
from tests.onray.conftest import KEY, S3_KEYS, Store, chat, ray_env
from tests.support.fakehub import FakeHub
from tests.support.procs import start_modelport
from tests.support.raycluster import RayCluster, wait_for


def test_a_lost_head_puts_its_endpoints_in_error_and_the_api_keeps_answering(
    tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path, store: Store
) -> None:
    cluster = RayCluster(env={**S3_KEYS, "OMP_NUM_THREADS": "1"})
    proc = None
    try:
        cluster.start_head()
        cluster.add_worker()
        env = ray_env(tmp_path, db_url, hub, cluster, store)
        proc, url = start_modelport(env, tmp_path / "server.log")
        live = Live(url, KEY, proc, env)
        upload(live, hub, "tiny", tiny_llama)
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "devuser/tiny", "hardware": "1x_cpu_2gb"}
        wait_for(  # the server has read the cluster's nodes (its supervisor does, in the background)
            lambda: "1x_cpu_2gb" in {h["id"] for h in live.get("/v1/hardware")["data"]}, 60, "the cluster's hardware"
        )
        created = httpx.post(f"{url}/v1/endpoints", json=body, headers=auth, timeout=30)
        assert created.status_code == 200, created.text
        endpoint = created.json()
        wait_state(live, endpoint["id"], "STARTED", timeout=180)
        serverless = chat(live, "devuser/tiny")

        cluster.kill_head()
        # In seconds (the call timeout here is 5 s): the server never waits on a new agent joining a lost head.
        failed = wait_for(
            lambda: (e := live.get(f"/v1/endpoints/{endpoint['id']}"))["state"] == "ERROR" and e,
            30,
            "the endpoint reporting the lost cluster",
        )
        assert f"the Ray cluster at {cluster.address} is unreachable" in failed["error"], failed
        # Everything else answers, and at once: no request waits on the cluster.
        started = time.monotonic()
        assert any(m["id"] == "devuser/tiny" for m in live.get("/v1/models")["data"])
        assert httpx.get(f"{url}/v1/hardware", headers=auth, timeout=10).status_code == 200
        assert time.monotonic() - started < 5
        assert chat(live, "devuser/tiny") == serverless  # serverless models run on this server's own engines
        refused = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": endpoint["name"], "messages": [{"role": "user", "content": "hi"}]},
            headers=auth,
            timeout=30,
        )
        assert refused.status_code == 400 and "unreachable" in refused.json()["error"]["message"]
    finally:
        if proc is not None:
            proc.stop()
        cluster.stop()
