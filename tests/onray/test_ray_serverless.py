"""Serverless models on the cluster: engine actors shared by every base model, adapters multiplexed."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Live
from tests.e2e.test_inference_clients import upload
from tests.onray.conftest import KEY, Asking, Store, chat, ray_env
from tests.onray.test_ray_endpoints import TIMINGS, first_token_s
from tests.support.fakehub import FakeHub
from tests.support.procs import start_modelport
from tests.support.raycluster import RayCluster, wait_for
from tests.support.tinymodels import make_lora

GIB = 1024**3
MODELS = ("devuser/tiny", "devuser/lora-a", "devuser/lora-b")


def pool_actors(cluster: RayCluster) -> list[str]:
    return [a for a in cluster.actors() if a.startswith("serverless.pool.")]


def holdings(cluster: RayCluster) -> dict[str, set[str]]:
    """Which worker node's cache holds each model folder (by revision id): what the actors fetched."""
    found: dict[str, set[str]] = defaultdict(set)
    for config in cluster.root.glob("cache/worker*/models/*/*config.json"):
        found[config.parent.name].add(config.parents[2].name)
    return found


def test_serverless_models_run_on_cluster_engines_with_their_adapters_multiplexed(
    tmp_path: Path,
    db_url: str,
    hub: FakeHub,
    tiny_llama: Path,
    tiny_lora: Path,
    cluster: RayCluster,
    store: Store,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = ray_env(
        tmp_path,
        db_url,
        hub,
        cluster,
        store,
        MODELPORT_RAY_SERVERLESS_REPLICAS="2",
        MODELPORT_RAY_SERVERLESS_CPUS="0.5",
        MODELPORT_RAY_SERVERLESS_MEMORY_BYTES=str(GIB),
    )
    proc, url = start_modelport(env, tmp_path / "server.log")
    live = Live(url, KEY, proc, env)
    try:
        upload(live, hub, "tiny", tiny_llama)
        upload(live, hub, "lora-a", tiny_lora, model_type="adapter", base_model="tiny")
        other = make_lora(tmp_path / "lora-b", tiny_llama, seed=7)
        upload(live, hub, "lora-b", other, model_type="adapter", base_model="tiny")
        # Two engine actors, spread over the two workers, launched by the server that controls.
        wait_for(lambda: len(pool_actors(cluster)) == 2, 60, "two serverless engine actors")
        TIMINGS["ray: serverless first token, engines starting (s)"] = first_token_s(live, MODELS[0])
        answers = {m: {chat(live, m) for _ in range(3)} for m in MODELS}
        # Greedy: each model always answers the same; the adapter changes the base's answer (a random adapter
        # may also answer nothing at all: it can pick the end of the sequence first).
        assert all(len(a) == 1 for a in answers.values()) and answers[MODELS[0]] != answers[MODELS[1]], answers
        TIMINGS["ray: serverless first token, warm (s)"] = first_token_s(live, MODELS[2])

        # Every model came from the blob store into a node's cache, and each adapter onto one node only:
        # its requests went to the engine that already held it.
        held = holdings(cluster)
        adapter_ids = [k for k in held if any(cluster.root.glob(f"cache/*/models/{k}/adapter_config.json"))]
        assert len(adapter_ids) == 2, held
        assert all(len(held[k]) == 1 for k in adapter_ids), held
        # The server started none of its own engine processes.
        assert not (tmp_path / "data" / "engines").exists() or not list((tmp_path / "data" / "engines").iterdir())
        metrics = httpx.get(f"{live.url}/metrics", timeout=30).text
        assert 'worker="ray-0"' in metrics and "modelport_worker_loaded_adapters" in metrics

        # The worker holding the adapters is lost: requests keep being answered (a retryable 503 at most),
        # by the other engine, and a replacement engine is launched on the surviving worker.
        (victim,) = held[adapter_ids[0]]
        with Asking(live, "devuser/lora-a", next(iter(answers["devuser/lora-a"]))) as asking:
            try:
                killed = time.monotonic()
                cluster.kill_node(victim)
                before = asking.served
                wait_for(lambda: asking.served > before + 3, 60, "requests served after the loss")
                TIMINGS["ray: serverless answers again after a node loss (s)"] = time.monotonic() - killed
                wait_for(lambda: len(pool_actors(cluster)) == 2, 60, "a replacement serverless engine")
            finally:
                cluster.add_worker()
        assert not asking.failures, asking.failures
    finally:
        proc.stop()
        cluster.kill_actors()
    with capsys.disabled():
        print("\n" + "\n".join(f"  {k}: {v:.2f}" for k, v in sorted(TIMINGS.items()) if "serverless" in k))
