"""The seeds' workflow, driven by the official ``together`` CLI and SDK against a live server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Live
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of

# Client conformance: what the clients see does not depend on the database.
pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]


def _job_id(output: str) -> str:
    match = re.search(r"job-[0-9a-f-]{36}", output)
    assert match, output
    return match.group(0)


STATUS_SDK = """
import json, sys
from together import Together
job = Together().models.uploads.status({job_id!r})
print(json.dumps({{"status": job.status, "updates": [u.status for u in job.status_updates]}}))
"""


@pytest.mark.parametrize("fmt", ["tar.gz", "tar", "zip"])
def test_cli_1_5_uploads_from_a_presigned_url(live: Live, presign: Any, tiny_llama: Path, fmt: str) -> None:
    url = presign(archive_bytes(files_of(tiny_llama), fmt), key=f"tiny.{fmt}")
    out = live.together(
        "1.5.35",
        "models",
        "upload",
        "--model-name",
        "tiny",
        "--model-source",
        url,
        "--model-type",
        "model",
        "--description",
        "a tiny llama",
    ).stdout
    assert "Model upload job created successfully" in out and "devuser/tiny" in out
    job_id = _job_id(out)
    # The SDK reads the job while it runs and once it is done; in between, polling it would start a
    # Python process importing the SDK every second, taking a core from the job it waits for.
    assert live.sdk("2.42.0", STATUS_SDK.format(job_id=job_id))["status"] in ("Queued", "Running", "Complete")
    live.wait_job(job_id, timeout=300)
    status = live.sdk("2.42.0", STATUS_SDK.format(job_id=job_id))
    assert status["status"] == "Complete", status
    assert live.together("1.5.35", "models", "list").stdout.count("devuser/tiny") == 1
    models = json.loads(live.together("1.5.35", "models", "list", "--json").stdout)
    assert [m["ID"] for m in models] == ["devuser/tiny"]
    assert models[0]["Type"] == "chat" and models[0]["Context Length"] == 128
    # The signature never reaches the server's log or the job record.
    signature = re.search(r"Signature=([^&]+)", url)
    assert signature and signature.group(1) not in live.proc.output()
    assert signature.group(1) not in json.dumps(live.get(f"/v1/jobs/{job_id}"))


def test_cli_2_42_uploads_an_adapter_from_hugging_face(
    live: Live, hub: FakeHub, tiny_llama: Path, tiny_lora: Path
) -> None:
    token = "hf_e2etokenvalue0123456789"
    hub.add("acme/tiny-base", files_of(tiny_llama))
    hub.add("acme/tiny-lora", files_of(tiny_lora), token=token)
    out = live.together(
        "2.42.0", "models", "upload", "--model-name", "tiny-base", "--model-source", "acme/tiny-base"
    ).stdout
    assert live.wait_job(_job_id(out))["status"] == "Complete"
    out = live.together(
        "2.42.0",
        "models",
        "upload",
        "--model-name",
        "tiny-lora",
        "--model-source",
        f"{hub.url}/acme/tiny-lora",
        "--model-type",
        "adapter",
        "--base-model",
        "tiny-base",
        "--hf-token",
        token,
    ).stdout
    job = live.wait_job(_job_id(out))
    assert job["status"] == "Complete", job
    assert job["type"] == "adapter_upload"
    listed = live.together("2.42.0", "models", "list", "--json")
    assert "devuser/tiny-lora" in listed.stdout and "devuser/tiny-base" in listed.stdout
    assert token not in live.proc.output()
    assert token not in json.dumps(live.get("/v1/jobs"))


def test_cli_reports_a_duplicate_name_clearly(live: Live, hub: FakeHub, tiny_llama: Path) -> None:
    hub.add("acme/dup", files_of(tiny_llama))
    live.together("1.5.35", "models", "upload", "--model-name", "dup", "--model-source", "acme/dup")
    again = live.together(
        "1.5.35", "models", "upload", "--model-name", "dup", "--model-source", "acme/dup", check=False
    )
    assert again.returncode != 0
    assert "Model name already exists" in again.stdout + again.stderr
