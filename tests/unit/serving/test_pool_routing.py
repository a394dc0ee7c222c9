"""The serverless pool's choice of engine worker: adapter affinity, then base affinity, then load."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelport.errors import EngineOverloaded
from modelport.serving.ipc import EngineClient
from modelport.serving.pool import EnginePool, RemoteEngine, _Worker
from modelport.settings import Settings


def workers(tmp_path: Path, loads: list[int]) -> list[_Worker]:
    made = []
    for i, load in enumerate(loads):
        w = _Worker(i, EngineClient(tmp_path / f"w{i}.sock", "fake", f"worker {i}"), tmp_path / f"w{i}.log", ready=True)
        w.client.in_flight = load
        made.append(w)
    return made


def pool(tmp_path: Path, max_num_seqs: int = 4) -> EnginePool:
    return EnginePool(Settings(data_dir=tmp_path, engine="fake", max_num_seqs=max_num_seqs))


def test_a_new_model_goes_to_the_least_loaded_then_to_the_emptiest(tmp_path: Path) -> None:
    p, ws = pool(tmp_path), workers(tmp_path, [2, 1, 1])
    ws[1].bases.add("other")
    assert p._choose(ws, "m", None) is ws[2]  # as loaded as worker 1, with fewer models


def test_a_loaded_base_wins_over_an_idle_worker(tmp_path: Path) -> None:
    p, ws = pool(tmp_path), workers(tmp_path, [0, 3])
    ws[1].bases.add("m")
    assert p._choose(ws, "m", None) is ws[1]
    assert p._choose(ws, "m", "lora-a") is ws[1]  # an adapter is cheap to load beside its base


def test_the_worker_with_the_adapter_wins_over_one_with_the_base_only(tmp_path: Path) -> None:
    p, ws = pool(tmp_path), workers(tmp_path, [0, 2, 1])
    for w in ws[1:]:
        w.bases.add("m")
    ws[1].adapters.add("lora-a")
    assert p._choose(ws, "m", "lora-a") is ws[1]
    assert p._choose(ws, "m", "lora-b") is ws[2]  # the base's least loaded holder


def test_a_saturated_holder_spills_to_the_least_loaded(tmp_path: Path) -> None:
    p, ws = pool(tmp_path, max_num_seqs=4), workers(tmp_path, [4, 0])
    ws[0].bases.add("m")
    ws[0].adapters.add("lora-a")
    assert p._choose(ws, "m", "lora-a") is ws[1]


# --- remote engines (serverless engine actors on a Ray cluster) ---------------------------------------
class Cluster:
    """``RemoteEngines`` as a test sets it: which engines answer, what each says it holds."""

    def __init__(self, tmp_path: Path, n: int) -> None:
        self.up = True
        self.clients = [EngineClient(tmp_path / f"r{i}.sock", "fake", f"ray {i}") for i in range(n)]
        self.models: list[dict[str, list[str]] | None] = [None] * n

    def usable(self) -> bool:
        return self.up

    def engines(self) -> list[RemoteEngine]:
        return [RemoteEngine(f"ray-{i}", c, self.models[i]) for i, c in enumerate(self.clients)]


def route(p: EnginePool, base: str, adapter: str | None = None) -> EngineClient:
    return asyncio.run(p._route(base, adapter))


def remote_pool(tmp_path: Path, cluster: Cluster) -> EnginePool:
    return EnginePool(Settings(data_dir=tmp_path, engine="fake", replica_start_timeout_s=1), cluster)


def test_requests_go_to_the_remote_engine_that_reports_holding_their_adapter(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    cluster.models[1] = {"m": []}
    cluster.models[2] = {"m": ["lora-a"]}
    cluster.clients[2].in_flight = 2  # busier, but it holds the adapter
    p = remote_pool(tmp_path, cluster)
    assert route(p, "m", "lora-a") is cluster.clients[2]
    assert route(p, "m", "lora-b") is cluster.clients[1]  # holds the base only, and is less loaded
    assert route(p, "other") is cluster.clients[0]  # a new base: the idle engine holding the fewest models
    assert p._thread is None  # the server's own engine processes never started
    assert [w.label for w in p.workers()] == ["ray-0", "ray-1", "ray-2"]


def test_what_was_sent_counts_until_the_engine_reports_again(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2)
    cluster.models = [{}, {}]
    p = remote_pool(tmp_path, cluster)
    first = route(p, "m", "lora-a")
    cluster.clients[cluster.clients.index(first)].in_flight = 3
    assert route(p, "m", "lora-a") is first  # sent there a moment ago: it is loading it
    # Its next report says it evicted the model (its memory budget): the affinity goes with it.
    cluster.models = [{}, {}]
    assert route(p, "m", "lora-a") is not first


def test_a_cluster_that_cannot_serve_sends_requests_to_the_server_s_own_engines(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 1)
    cluster.up = False
    p = remote_pool(tmp_path, cluster)
    assert asyncio.run(p._route_remote(cluster, "m", None)) is None  # _route then falls back to its own


def test_a_usable_cluster_with_no_engine_ready_is_waited_for_then_overloaded(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 0)
    p = remote_pool(tmp_path, cluster)
    with pytest.raises(EngineOverloaded, match="Ray cluster"):
        route(p, "m")
    assert p._thread is None
