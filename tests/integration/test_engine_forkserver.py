"""The fork server, with real processes (the fake engine in them): a child is an engine process like one
started as a program (its own socket, the engine's niceness, no secret in its environment), its signals
and exit codes reach the server as a child's would, none outlives its fork server, and the pool starts
its workers again from a new fork server when the old one dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from modelport import forkserver
from modelport.forkserver import Forked, ForkServer
from modelport.serving.host import EngineSpec, engine_env, engine_settings, prepare
from modelport.serving.ipc import probe
from modelport.serving.pool import EnginePool
from modelport.settings import Settings
from tests.integration.test_engine_pool import generate

# Processes, not the database.
pytestmark = pytest.mark.db_agnostic

SECRETS = {"MODELPORT_DATABASE_URL": "postgresql://u:pw@db/x", "AWS_SECRET_ACCESS_KEY": "aws", "HF_TOKEN": "hf_x"}
NICE = 7
LIGHT = ("modelport.serving.host", "modelport.serving.engines.fake")  # what a fake engine needs


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForkServer]:
    """A fork server of the test's own, started while our environment holds secrets."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    started = ForkServer(LIGHT)
    yield started
    started.close()


def start(server: ForkServer, tmp_path: Path, name: str = "w", **settings: object) -> Forked:
    """What ``host.fork_engine`` does, from this fork server."""
    values = engine_settings(Settings(data_dir=tmp_path, engine="fake", engine_nice=NICE), **settings)
    spec = EngineSpec(os.getpid(), values, env={"OMP_NUM_THREADS": "1"})
    spec_path, socket_path, log_path = (tmp_path / f"{name}.{kind}" for kind in ("json", "sock", "log"))
    prepare(spec, spec_path, socket_path)
    args = [str(spec_path), str(socket_path)]
    return server.fork("modelport.serving.host:run_forked", args, env=engine_env(spec.env), log=log_path)


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert check(), "timed out"


def answers(path: Path) -> Callable[[], bool]:
    return lambda: probe(path, timeout=0.5) is not None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # reparented, not yet reaped
    except psutil.NoSuchProcess:
        return True


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with, as another process of its user can read it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_a_forked_engine_is_an_engine_process_of_its_own(tmp_path: Path, server: ForkServer) -> None:
    proc = start(server, tmp_path)
    wait_for(answers(tmp_path / "w.sock"), 30)
    child = psutil.Process(proc.pid)
    assert child.ppid() == server.proc.pid and child.nice() == psutil.Process().nice() + NICE
    assert (tmp_path / "w.sock").stat().st_mode & 0o777 == 0o600
    for pid in (server.proc.pid, proc.pid):  # the secrets were never in their memory to begin with
        env = environ(pid)
        assert not set(SECRETS) & set(env) and not any(k.startswith("MODELPORT_") for k in env)
        assert env["HF_HUB_OFFLINE"] == "1"
    proc.terminate()
    assert proc.wait(10) == -signal.SIGTERM


def test_signals_and_exit_codes_come_back_as_a_childs_would(tmp_path: Path, server: ForkServer) -> None:
    proc = start(server, tmp_path)
    wait_for(answers(tmp_path / "w.sock"), 30)
    assert proc.poll() is None
    proc.kill()
    assert proc.wait(10) == -signal.SIGKILL and proc.poll() == -signal.SIGKILL
    assert gone(proc.pid)  # reaped by the fork server, which sent its status only then
    proc.kill()  # a process that has ended is not signalled again (nor whoever has its pid now)
    failing = start(server, tmp_path, "bad", max_num_seqs=0)  # refused by its settings
    assert failing.wait(30) == 1
    assert "max_num_seqs" in (tmp_path / "bad.log").read_text()  # the traceback, in its own log


def test_no_child_outlives_its_fork_server(tmp_path: Path, server: ForkServer) -> None:
    proc = start(server, tmp_path, "a")
    wait_for(answers(tmp_path / "a.sock"), 30)
    server.close()  # as when the server exits: its stdin ends
    assert proc.wait(10) == -signal.SIGKILL
    wait_for(lambda: gone(proc.pid), 5)
    # One killed outright takes none along: its children see their parent gone (within a second).
    again = ForkServer(LIGHT)
    try:
        proc = start(again, tmp_path, "b")
        wait_for(answers(tmp_path / "b.sock"), 30)
        again.proc.kill()
        assert proc.wait(10) == -signal.SIGKILL
        wait_for(lambda: gone(proc.pid), 5)
    finally:
        again.close()


def test_a_pool_whose_fork_server_dies_starts_its_workers_again(tmp_path: Path) -> None:
    pool = EnginePool(Settings(data_dir=tmp_path, engine="fake"))
    try:
        assert asyncio.run(generate(pool)) == 2
        dead = forkserver.server()
        dead.proc.kill()
        wait_for(lambda: pool.workers()[0].restarts == 1 and pool.workers()[0].ready, 120)  # torch imports again
        assert asyncio.run(generate(pool)) == 2
        assert forkserver.server() is not dead
    finally:
        pool.stop()
