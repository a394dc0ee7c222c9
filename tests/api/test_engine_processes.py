"""Over a real HTTP connection: a client that leaves mid-stream frees its slot at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelport.app import create_app
from modelport.serving.engines.fake import FakeEngine
from modelport.serving.observe import Observers, Outcome, Served
from modelport.settings import Settings
from tests.integration.helpers import upload
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of


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


@pytest.fixture
def server(
    settings: Settings, hub: FakeHub, tiny_llama: Path, recorder: Recorder
) -> Iterator[tuple[str, str, FakeEngine]]:
    app = create_app(settings, run_workers=False)
    app.state.services.prepare()  # the schema, before the server's lifespan would make it
    # One slot and 50 ms per token: a 100-token stream would hold the slot for 5 s.
    fake = FakeEngine(max_num_seqs=1, token_delay_s=0.05)
    app.state.services.live.inference.engine = fake
    app.state.services.live.inference.observer = Observers(recorder)
    key = app.state.services.accounts.create_key("acme")
    hub.add("acme/tiny-stream", files_of(tiny_llama))
    who = app.state.services.accounts.authenticate(key)
    assert upload(app.state.services, who, "tiny", "acme/tiny-stream").job.status == "Complete"
    with serve_in_thread(app) as url:
        yield url, key, fake


def test_disconnect_frees_the_slot(server: tuple[str, str, FakeEngine], recorder: Recorder) -> None:
    url, key, fake = server
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "prompt": "a b c", "max_tokens": 100, "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert fake.running == 1
    started = time.monotonic()
    resp = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2}, headers=headers)
    assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] == "length"
    assert time.monotonic() - started < 2.0  # not the 5 s the abandoned stream would have taken
    deadline = time.monotonic() + 2
    while fake.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.running == 0
    # The observers heard both: the abandoned stream as cancelled, with the tokens it got; the other whole.
    deadline = time.monotonic() + 2
    while len(recorder.served) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    by_outcome = {s.outcome: s for s in recorder.served}
    assert set(by_outcome) == {Outcome.CANCELLED, Outcome.OK}
    assert 1 <= by_outcome[Outcome.CANCELLED].completion_tokens < 100
    assert by_outcome[Outcome.OK].completion_tokens == 2 and by_outcome[Outcome.OK].model == "acme/tiny"
    assert recorder.first == ["acme/tiny", "acme/tiny"] and recorder.gaps >= 1
