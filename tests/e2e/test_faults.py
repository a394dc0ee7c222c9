"""Crashes and separate workers, with real processes: nothing stays Running, nothing is orphaned."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Live, server_env
from tests.support.fakehub import FakeHub
from tests.support.procs import Proc, modelport_exe, start_modelport
from tests.support.tinymodels import archive_bytes, files_of

pytestmark = pytest.mark.e2e


def _submit(url: str, key: str, name: str, source: str) -> str:
    resp = httpx.post(
        f"{url}/v1/models",
        headers={"Authorization": f"Bearer {key}"},
        json={"model_name": name, "model_source": source},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["data"]["job_id"])


def _wait_stage(live: Live, job_id: str, stage: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = live.get(f"/v1/jobs/{job_id}")
        progress = job.get("progress") or {}
        if progress.get("stage") == stage and progress.get("bytes_done"):
            return dict(job)
        time.sleep(0.05)
    raise TimeoutError(stage)


def test_kill_9_during_download_then_restart_resumes_the_job(
    tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path
) -> None:
    key = "mp-fault-test-key-0123456789abcdef"
    env = server_env(tmp_path, db_url, hub, key)
    source = hub.serve_file("slow.tar", archive_bytes(files_of(tiny_llama), "tar"), seconds=3)
    proc, url = start_modelport(env, tmp_path / "first.log")
    try:
        live = Live(url, key, proc, env)
        job_id = _submit(url, key, "crashy", source)
        progress = _wait_stage(live, job_id, "downloading")["progress"]
        assert 0 < progress["bytes_done"] < progress["bytes_total"]
    finally:
        proc.kill9()
    staging = tmp_path / "data" / "staging"
    assert any(staging.iterdir()), "the crash should leave a half-done staging tree behind"

    proc, url = start_modelport(env, tmp_path / "second.log")
    live = Live(url, key, proc, env)
    try:
        job = live.wait_job(job_id, timeout=60)
        assert job["status"] == "Complete", job
        messages = [u["message"] for u in job["status_updates"]]
        assert any("it will be resumed" in m for m in messages)
        assert any("attempt 2" in m for m in messages)
        assert [m["id"] for m in live.get("/v1/models")["data"]] == ["devuser/crashy"]
        assert list(staging.iterdir()) == []
    finally:
        proc.stop()


STAGES = ["downloading", "extracting", "validating", "admitting", "storing", "registering"]


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_in_each_stage_ends_resumed_with_nothing_orphaned(
    tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path, stage: str
) -> None:
    key = "mp-stage-test-key-0123456789abcdef"
    env = server_env(tmp_path, db_url, hub, key, MODELPORT_STAGE_DELAY_S="0.6", MODELPORT_JOB_LEASE_S="1.5")
    proc, url = start_modelport(env, tmp_path / "first.log")
    try:
        live = Live(url, key, proc, env)
        job_id = _submit(url, key, "staged", hub.serve_file(f"{stage}.tar", archive_bytes(files_of(tiny_llama), "tar")))
        _wait_for(live, job_id, lambda job: (job.get("progress") or {}).get("stage") == stage)
    finally:
        proc.kill9()
    proc, url = start_modelport(env, tmp_path / "second.log")
    try:
        live = Live(url, key, proc, env)
        job = live.wait_job(job_id, timeout=90)
        assert job["status"] == "Complete", job
        assert any("it will be resumed" in u["message"] for u in job["status_updates"])
        model = live.get("/v1/models/devuser/staged")
        referenced = {f["sha256"] for f in model["manifest"]["files"]}
        blobs = {p.name for p in (tmp_path / "data" / "blobs" / "sha256").glob("??/*")}
        assert blobs == referenced
        assert list((tmp_path / "data" / "staging").iterdir()) == []
    finally:
        proc.stop()


def _wait_for(live: Live, job_id: str, ready: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(live.get(f"/v1/jobs/{job_id}")):
            return
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_a_separate_worker_process_runs_the_jobs(tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path) -> None:
    key = "mp-worker-test-key-0123456789abcdef"
    env = server_env(tmp_path, db_url, hub, key, MODELPORT_WORKERS="0")
    proc, url = start_modelport(env, tmp_path / "server.log")
    worker = None
    try:
        live = Live(url, key, proc, env)
        job_id = _submit(url, key, "via-worker", hub.serve_file("w.tar", archive_bytes(files_of(tiny_llama), "tar")))
        time.sleep(1.0)
        assert live.get(f"/v1/jobs/{job_id}")["status"] == "Queued"  # the API process runs no jobs
        worker = Proc([modelport_exe(), "worker", "--threads", "2"], tmp_path / "worker.log", env)
        assert live.wait_job(job_id)["status"] == "Complete"
        assert "running job " + job_id in worker.output()
    finally:
        if worker:
            worker.stop()
        proc.stop()
