"""`modelport models upload` from a local folder: packed, sent in parts, resumed after an interruption."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from modelport.cli import upload
from modelport.cli.client import ApiError, Client
from modelport.cli.pack import pack_directory
from tests.e2e.conftest import Live
from tests.support.procs import modelport_exe
from tests.support.tinymodels import make_llama

# Client conformance: what the clients see does not depend on the database.
pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]


def test_cli_uploads_a_local_folder_and_resumes(live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = make_llama(tmp_path / "local-model", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    # The first attempt dies after two parts (as if the network dropped).
    archive = pack_directory(folder, tmp_path / "first.tar")
    client = Client(live.url, live.key)
    monkeypatch.setattr(upload, "PART_BYTES", 16 * 1024)
    sent: list[int] = []
    real_put = upload.put_part

    def flaky_put(client: Client, upload_id: str, number: int, data: bytes) -> None:
        if len(sent) == 2:
            raise ApiError(503, "network dropped")
        sent.append(number)
        real_put(client, upload_id, number, data)

    monkeypatch.setattr(upload, "put_part", flaky_put)
    with pytest.raises(ApiError):
        upload.upload_file(client, archive)
    monkeypatch.setattr(upload, "put_part", real_put)
    parts_before = live.proc.output().count("PUT /api/v1/uploads/")

    # The CLI packs the same folder to the same bytes, finds the earlier upload, sends only the rest.
    env = {**os.environ, "MODELPORT_API_KEY": live.key, "MODELPORT_BASE_URL": live.url}
    out = subprocess.run(
        [modelport_exe(), "models", "upload", "--model-name", "local", "--model-source", str(folder), "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert live.get(f"/v1/jobs/{job_id}")["status"] == "Complete"
    total_parts = -(-archive.stat().st_size // (16 * 1024))
    resent = live.proc.output().count("PUT /api/v1/uploads/") - parts_before
    assert resent == total_parts - 2
    models = {m["id"] for m in live.get("/v1/models")["data"]}
    assert "devuser/local" in models
    bad = subprocess.run(
        [modelport_exe(), "models", "upload", "--model-name", "local", "--model-source", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "Model name already exists" in bad.stderr and "Traceback" not in bad.stderr
    assert "modelport models delete local" in bad.stderr  # the hint: what to run next
