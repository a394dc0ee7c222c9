"""The serverless pool's watcher, with real engine processes: a stuck one is killed and restarted, one
that cannot start fails requests at once without telling a tenant its log, and engine processes get a
pared-down environment."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from modelport.errors import EngineFailed
from modelport.manifest import Manifest, ModelKind
from modelport.serving import pool as pool_module
from modelport.serving.engine import Artifact, GenerationRequest, SamplingParams
from modelport.serving.host import engine_env
from modelport.serving.pool import EnginePool
from modelport.settings import Settings

# Engine processes and their watcher: no database involved.
pytestmark = pytest.mark.db_agnostic

ARTIFACT = Artifact("m", Path("/nowhere"), Manifest(kind=ModelKind.MODEL), 0)
REQUEST = GenerationRequest("r", ARTIFACT, None, [1, 2, 3], SamplingParams(max_tokens=2), 64)


async def generate(pool: EnginePool) -> int:
    return len([s async for s in pool.generate(REQUEST)])


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert check(), "timed out"


def test_a_stuck_engine_process_is_killed_and_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "HUNG_S", 1.0)
    pool = EnginePool(Settings(data_dir=tmp_path, engine="fake"))
    try:
        assert asyncio.run(generate(pool)) == 2
        (before,) = pool.workers()
        assert before.pid is not None
        os.kill(before.pid, signal.SIGSTOP)  # alive, and answering nothing
        wait_for(lambda: pool.workers()[0].restarts == 1 and pool.workers()[0].ready, 20)
        assert not psutil.pid_exists(before.pid) or psutil.Process(before.pid).status() == psutil.STATUS_ZOMBIE
        assert asyncio.run(generate(pool)) == 2
    finally:
        pool.stop()


def test_an_engine_that_cannot_start_fails_requests_without_its_log(tmp_path: Path) -> None:
    pool = EnginePool(Settings(data_dir=tmp_path, engine="transformers", engine_device="no-such-device"))
    try:
        started = time.monotonic()
        with pytest.raises(EngineFailed) as failed:
            asyncio.run(generate(pool))
        assert time.monotonic() - started < 60  # three failed starts, not the start timeout
        assert "no-such-device" not in failed.value.message and "server's log" in failed.value.message
        assert "no-such-device" in (tmp_path / "engines" / "worker-0.log").read_text()
    finally:
        pool.stop()


def test_engine_processes_inherit_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "MODELPORT_DATABASE_URL": "postgresql://u:pw@db/x",
        "MODELPORT_S3_SECRET_ACCESS_KEY": "s3cret",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "HF_TOKEN": "hf_x",
    }
    for name, value in {**secrets, "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "3"}.items():
        monkeypatch.setenv(name, value)
    env = engine_env({"OMP_NUM_THREADS": "1"})
    assert not set(secrets) & set(env) and not any(k.startswith("MODELPORT_") for k in env)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["OMP_NUM_THREADS"] == "1" and env["PATH"]
    assert env["HF_HUB_OFFLINE"] == "1"
