"""Engine processes, over real HTTP connections and the engine protocol (the fake engine in them): a
client that leaves mid-stream frees its slot at once in the process generating for it; a process that
dies fails what it had in flight with ``engine_restarted`` and is restarted; processes started by hand
(``MODELPORT_ENGINE_SOCKETS``) serve the same way."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from modelport.app import create_app
from modelport.serving import pool as pool_module
from modelport.serving.observe import Observers, Outcome, Served
from modelport.serving.pool import EnginePool
from modelport.settings import Settings
from tests.integration.helpers import upload
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of

# Engine processes, not the database: the catalog only names the model.
pytestmark = pytest.mark.db_agnostic


class Recorder:
    """An inference observer that keeps what it is told."""

    def __init__(self) -> None:
        self.first: list[str] = []
        self.gaps = 0
        self.served: list[Served] = []

    def first_token(self, model: str, seconds: float) -> None:
        self.first.append(model)

    def token(self, model: str, gap_s: float) -> None:
        self.gaps += 1

    def finished(self, served: Served) -> None:
        self.served.append(served)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@contextmanager
def serving_tiny(
    settings: Settings, hub: FakeHub, tiny_llama: Path, recorder: Recorder
) -> Iterator[tuple[str, str, EnginePool]]:
    """The tiny model uploaded (its structure checked only: admission is not the point here), and the app
    served over real HTTP: its base URL, a key of its account and its serverless engine pool."""
    app = create_app(settings.model_copy(update={"admission_max_bytes": 0}), run_workers=False)
    app.state.services.prepare()  # the schema, before the server's lifespan would make it
    app.state.services.live.inference.observer = Observers(recorder)
    key = app.state.services.accounts.create_key("acme")
    hub.add("acme/tiny-stream", files_of(tiny_llama))
    who = app.state.services.accounts.authenticate(key)
    assert upload(app.state.services, who, "tiny", "acme/tiny-stream").job.status == "Complete"
    with serve_in_thread(app) as url:
        yield url, key, app.state.services.live.engine


# One slot and 50 ms per token: a 100-token stream would hold the slot for 5 s.
SLOW_FAKE = {"engine": "fake", "max_num_seqs": 1, "engine_fake_token_delay_s": 0.05}


@pytest.fixture
def server(
    settings: Settings, hub: FakeHub, tiny_llama: Path, recorder: Recorder
) -> Iterator[tuple[str, str, EnginePool]]:
    fake = settings.model_copy(update=SLOW_FAKE)
    with serving_tiny(fake, hub, tiny_llama, recorder) as served:
        yield served


def running(pool: EnginePool) -> int:
    """Sequences the engine processes are generating, as they report it themselves."""
    return sum(int(stats.get("running", 0)) for _, stats in pool.worker_stats())


def test_disconnect_frees_the_slot(server: tuple[str, str, EnginePool], recorder: Recorder) -> None:
    url, key, pool = server
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "prompt": "a b c", "max_tokens": 100, "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert running(pool) == 1
    started = time.monotonic()
    resp = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2}, headers=headers)
    assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] == "length"
    assert time.monotonic() - started < 2.0  # not the 5 s the abandoned stream would have taken
    deadline = time.monotonic() + 2
    while running(pool) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running(pool) == 0
    # The observers heard both: the abandoned stream as cancelled, with the tokens it got; the other whole.
    deadline = time.monotonic() + 2
    while len(recorder.served) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    by_outcome = {s.outcome: s for s in recorder.served}
    assert set(by_outcome) == {Outcome.CANCELLED, Outcome.OK}
    assert 1 <= by_outcome[Outcome.CANCELLED].completion_tokens < 100
    assert by_outcome[Outcome.OK].completion_tokens == 2 and by_outcome[Outcome.OK].model == "acme/tiny"
    assert recorder.first == ["acme/tiny", "acme/tiny"] and recorder.gaps >= 1


def test_a_killed_engine_worker_fails_its_requests_clearly_and_comes_back(
    server: tuple[str, str, EnginePool],
) -> None:
    """SIGKILL the engine process mid-stream: the stream ends with an ``engine_restarted`` error event, a
    waiting non-streamed request with a 503 of that code (never a hang), and the next request is served
    by the restarted worker."""
    url, key, pool = server
    headers = {"Authorization": f"Bearer {key}"}
    warm = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1}, headers=headers)
    assert warm.status_code == 200
    (before,) = pool.workers()
    assert before.ready and before.pid is not None
    body = {"model": "tiny", "prompt": "a b c", "max_tokens": 100}
    # The worker has one slot: the second request queues behind the stream, inside the worker.
    stream_body = {**body, "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        concurrent.futures.ThreadPoolExecutor(1) as threads,
        http.stream("POST", f"{url}/v1/completions", json=stream_body, headers=headers) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        waiting = threads.submit(http.post, f"{url}/v1/completions", json=body, headers=headers)
        time.sleep(0.2)
        os.kill(before.pid, signal.SIGKILL)
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        refused = waiting.result(timeout=10)
    assert rest and rest[-1]["error"]["code"] == "engine_restarted"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_restarted"
    assert refused.headers.get("retry-after") == "1"
    again = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 2}, headers=headers, timeout=30)
    assert again.status_code == 200 and again.json()["choices"][0]["finish_reason"] == "length"
    (after,) = pool.workers()
    assert after.ready and after.restarts == 1 and after.pid != before.pid


def test_engine_processes_started_by_hand_serve_and_are_watched(
    settings: Settings,
    hub: FakeHub,
    tiny_llama: Path,
    recorder: Recorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``modelport engine --socket`` started separately, listed in ``MODELPORT_ENGINE_SOCKETS``: the server
    starts none of its own, serves there, answers 503 at once while it is down, and uses it again once it
    is back."""
    # The watcher's pace, a fifth of the server's: the same steps, seconds sooner.
    monkeypatch.setattr(pool_module, "PROBE_S", 0.2)
    monkeypatch.setattr(pool_module, "EXTERNAL_SILENCE_S", 0.6)
    monkeypatch.setattr(pool_module, "EXTERNAL_WAIT_S", 1.0)
    sock = tmp_path / "e.sock"
    env = {**os.environ, "MODELPORT_ENGINE": "fake", "MODELPORT_DATA_DIR": str(settings.data_dir)}
    command = [sys.executable, "-m", "modelport.cli.main", "engine", "--socket", str(sock)]
    engine = subprocess.Popen(command, env=env)
    external = settings.model_copy(update={"engine": "fake", "engine_sockets": str(sock)})
    try:
        with serving_tiny(external, hub, tiny_llama, recorder) as (url, key, pool):
            headers = {"Authorization": f"Bearer {key}"}
            body = {"model": "tiny", "prompt": "a b c", "max_tokens": 3}

            def complete() -> httpx.Response:
                return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=30)

            assert complete().status_code == 200
            (state,) = pool.workers()
            assert state.ready and state.pid is None  # not a child of the server
            engine.kill()
            engine.wait()
            deadline = time.monotonic() + 5
            while pool.workers()[0].ready and time.monotonic() < deadline:
                time.sleep(0.05)
            started = time.monotonic()
            down = complete()
            assert down.status_code == 503 and down.json()["error"]["code"] == "engine_overloaded"
            assert time.monotonic() - started < 8  # a short wait, not the start timeout of a process of its own
            engine = subprocess.Popen(command, env=env)
            deadline = time.monotonic() + 30
            while not pool.workers()[0].ready and time.monotonic() < deadline:
                time.sleep(0.05)
            assert complete().status_code == 200
    finally:
        engine.kill()
        engine.wait()
