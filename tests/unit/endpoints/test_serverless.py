"""The serverless engine actors' keeper (``endpoints/serverless.py``), against a stand-in for the cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelport.endpoints.serverless import ClusterServerless
from modelport.settings import Settings

GIB = 1024**3


@dataclass
class Actor:
    name: str
    state: int | None = None  # None: runs (loading); an int: ended
    stopped: bool = False
    where: str = "node x"

    def poll(self) -> int | None:
        return self.state

    def ended(self, code: int) -> str:
        return "failed to start"

    def address(self) -> None:
        return None  # never answers here: readiness is the integration tests' (tests/onray)

    def stop(self) -> None:
        self.stopped = True

    def log_tail(self) -> str:
        return ""


@dataclass
class Cluster:
    reserved_bytes: int = 0
    reserved_gpus: int = 0
    launched: list[Actor] = field(default_factory=list)
    found: list[tuple[int, Actor]] = field(default_factory=list)  # what runs already

    def problem(self) -> None:
        return None

    def running(self, prefix: str) -> dict[str, list[tuple[int, Any]]]:
        assert prefix == "serverless."
        return {"pool": list(self.found)} if self.found else {}

    def launch_serverless(self, index: int, spec: Any) -> Actor:
        assert spec.model is None and spec.settings["engine_memory_bytes"] == 2 * GIB
        actor = Actor(f"serverless.pool.{index}.{len(self.launched)}")
        self.launched.append(actor)
        return actor


def keeper(cluster: Cluster, want: int) -> ClusterServerless:
    settings = Settings(ray_serverless_replicas=want, ray_serverless_memory_bytes=2 * GIB, ray_serverless_cpus=0.5)
    return ClusterServerless(settings, cluster)  # type: ignore[arg-type]


def test_the_controller_keeps_the_wanted_actors_and_backs_off_a_crash_loop() -> None:
    cluster = Cluster()
    pool = keeper(cluster, 2)
    assert cluster.reserved_bytes == 4 * GIB  # kept off what endpoints may reserve
    pool.tend(controlling=True)
    assert [a.name.split(".")[2] for a in cluster.launched] == ["0", "1"]
    cluster.launched[0].state = 1  # index 0 fails before it ever answered
    pool.tend(controlling=True)
    assert cluster.launched[0].stopped and len(cluster.launched) == 2  # not relaunched at once
    pool.tend(controlling=True)
    assert len(cluster.launched) == 2
    pool._failures[0] = (1, 0.0)  # its wait is over
    pool.tend(controlling=True)
    assert len(cluster.launched) == 3 and cluster.launched[2].name.startswith("serverless.pool.0.")
    assert not pool.usable() or pool.engines() == []  # none answers yet: the router waits or falls back


def test_a_new_controller_adopts_what_runs_and_stops_what_is_not_wanted() -> None:
    cluster = Cluster(found=[(0, Actor("serverless.pool.0.a")), (1, Actor("serverless.pool.1.b"))])
    cluster.found.append((1, Actor("serverless.pool.1.c")))  # a duplicate (two controllers raced once)
    pool = keeper(cluster, 1)
    pool.tend(controlling=True)
    assert cluster.launched == []  # index 0 adopted
    assert [a.stopped for _, a in cluster.found] == [False, True, True]  # index 1 is not wanted any more


def test_followers_launch_nothing_and_zero_stops_what_an_earlier_setting_left() -> None:
    cluster = Cluster(found=[(0, Actor("serverless.pool.0.a"))])
    follower = keeper(cluster, 2)
    follower.tend(controlling=False)
    assert cluster.launched == [] and [m.handle.name for m in follower._members.values()] == ["serverless.pool.0.a"]
    off = keeper(cluster, 0)
    assert not off.usable()
    off.tend(controlling=True)
    assert cluster.found[0][1].stopped and cluster.launched == []
