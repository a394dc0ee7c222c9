"""The API server runs no model itself: serving happens in engine processes it starts and watches."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.conftest import minilm_files
from tests.e2e.conftest import Live, server_env
from tests.e2e.test_inference_clients import MESSAGES, upload
from tests.support.fakehub import FakeHub
from tests.support.procs import Proc, free_port, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

# Runs `modelport serve` and, as the server exits, writes the modules it had imported: the process's own
# list, so what the engine processes, the admission checker or the chat-template workers import (they
# are other processes) does not count.
SERVE_AND_LIST_MODULES = """
import atexit, os, signal, sys
pid, out = os.getpid(), sys.argv.pop(1)
# uvicorn raises the SIGTERM it caught again once it has shut down: exit through atexit then.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
def listed():
    if os.getpid() == pid:
        with open(out, "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
atexit.register(listed)
from modelport.cli.main import cli
cli()
"""


@pytest.fixture
def listed(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[tuple[Live, Path]]:
    key = "mp-e2e-bootstrap-key-0123456789abcdef"
    env = server_env(tmp_path, db_url, hub, key)
    modules, port = tmp_path / "modules.txt", free_port()
    args = [sys.executable, "-c", SERVE_AND_LIST_MODULES, str(modules), "serve", "--port", str(port)]
    proc = Proc(args, tmp_path / "server.log", env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc.popen)
    yield Live(url, key, proc, env), modules
    proc.stop()


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def engine_processes(server: psutil.Process) -> list[psutil.Process]:
    """The serverless engine processes: the children of the server's fork server that write a worker's
    log (its other children are admission checks)."""
    (forkserver,) = [p for p in server.children() if "modelport.forkserver" in p.cmdline()]
    children = forkserver.children()
    return [p for p in children if any("/engines/worker-" in f.path for f in p.open_files())]


def test_the_api_process_never_loads_torch_or_transformers(
    listed: tuple[Live, Path], hub: FakeHub, tiny_llama: Path, tiny_lora: Path
) -> None:
    live, modules = listed
    auth = {"Authorization": f"Bearer {live.key}"}
    upload(live, hub, "tiny", tiny_llama)
    upload(live, hub, "tiny-lora", tiny_lora, model_type="adapter", base_model="tiny")
    hub.add("acme/minilm", minilm_files())
    body = {"model_name": "minilm", "model_source": "acme/minilm"}
    job = httpx.post(f"{live.url}/v1/models", json=body, headers=auth)
    assert live.wait_job(job.json()["data"]["job_id"])["status"] == "Complete"
    for model in ("devuser/tiny", "devuser/tiny-lora"):
        body = {"model": model, "messages": MESSAGES, "max_tokens": 4}
        assert httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=auth, timeout=60).status_code == 200
    embedded = httpx.post(f"{live.url}/v1/embeddings", json={"model": "devuser/minilm", "input": "hi"}, headers=auth)
    assert embedded.status_code == 200, embedded.text
    server = psutil.Process(live.proc.popen.pid)
    engines = engine_processes(server)
    assert len(engines) == 1  # MODELPORT_ENGINE_WORKERS' default
    assert "libtorch" in mapped(engines[0].pid)  # the engine process did the serving ...
    assert "libtorch" not in mapped(server.pid)  # ... and the API process loaded none of it
    live.proc.stop()
    loaded = set(modules.read_text().split())
    assert "modelport.serving.pool" in loaded  # the list is the server's, written as it exited
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "transformers", "peft", "accelerate")}
