"""The shared engine is built on its first request, once, off the event loop; a server that has not
served a serverless model has not imported torch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, GenerationRequest, SamplingParams
from modelport.serving.engines import DeferredEngine
from modelport.serving.engines.fake import FakeEngine

ARTIFACT = Artifact("model-0", Path("."), Manifest(kind=ModelKind.MODEL), 0)


def _request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest("gen-1", ARTIFACT, None, [1, 2, 3], SamplingParams(max_tokens=max_tokens), 64)


class Counting:
    def __init__(self) -> None:
        self.built: list[FakeEngine] = []
        self.threads: set[str] = set()

    def __call__(self) -> FakeEngine:
        self.threads.add(threading.current_thread().name)
        engine = FakeEngine(token_delay_s=0.01)
        self.built.append(engine)
        return engine


def test_built_once_by_concurrent_first_requests_and_never_on_the_loop() -> None:
    build = Counting()
    deferred = DeferredEngine("fake", build)
    deferred.start()
    assert build.built == [] and deferred.stats() == {"engine": "fake", "built": False, "models": {}}

    async def run() -> list[list[int]]:
        async def one() -> list[int]:
            return [step.token_id async for step in deferred.generate(_request(3))]

        return list(await asyncio.gather(*(one() for _ in range(4))))

    assert asyncio.run(run()) == [[3, 2, 1]] * 4
    assert len(build.built) == 1 and "MainThread" not in build.threads
    assert deferred.stats()["engine"] == "fake"


def test_closing_a_stream_early_reaches_the_engine() -> None:
    build = Counting()
    deferred = DeferredEngine("fake", build)

    async def run() -> None:
        stream = deferred.generate(_request(100))
        await stream.__anext__()
        assert build.built[0].running == 1
        await stream.aclose()

    asyncio.run(run())
    assert build.built[0].running == 0


def test_a_fresh_server_has_not_imported_torch(tmp_path: Path) -> None:
    # In a process of its own: this one has imported torch long ago.
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from modelport.app import create_app\n"
        "from modelport.settings import Settings\n"
        f"app = create_app(Settings(data_dir={str(tmp_path)!r}), run_workers=False)\n"
        "with TestClient(app) as client:\n"
        "    assert client.get('/health').status_code == 200\n"
        "    print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
