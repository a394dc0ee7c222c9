"""The ``modelport`` CLI against a live server: the README's walk-through run as written, exit codes and
hints, API keys over HTTP, and an interactive ``chat`` in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, Server
from tests.support.fakehub import FakeHub
from tests.support.procs import modelport_exe
from tests.support.tinymodels import files_of

pytestmark = pytest.mark.e2e


def readme_walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    return block.split("```bash\n", 1)[1].rsplit("```", 1)[0]


@pytest.mark.db_agnostic
def test_the_readme_walkthrough_runs_as_written(server: Server, hub: FakeHub) -> None:
    """The README's block, verbatim, in a fresh bash, as a new user pastes it: nothing set but the server's
    port, no files but the server's data folder, no cloud account, and nothing fetched from a hub."""
    (server.home / ".venv").symlink_to(Path(sys.prefix))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(server.home),
        "XDG_CACHE_HOME": str(server.home / "cache"),
        "MODELPORT_BASE_URL": server.url,
        "COLUMNS": "200",
    }
    hub_requests = len(hub.requests)
    script = "set -e\n" + readme_walkthrough()
    run = subprocess.run(["bash", "-c", script], cwd=server.home, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{server.proc.output()[-3000:]}"
    out, err = run.stdout, run.stderr
    assert out.splitlines()[:3] == ["admin", "./modelport-demo/tiny-chat", "./modelport-demo/tiny-lora"]  # whoami, demo
    assert len(hub.requests) == hub_requests
    assert re.search(r"^admin/my-model\s+model\s+chat\s+-\s+\d", out, re.M), out  # models list, a table row
    assert re.search(r"^admin/my-lora\s+adapter\s+chat\s+admin/my-model", out, re.M)
    assert re.search(r"^job-\S+\s+admin/my-lora\s+Complete", out, re.M)  # jobs list
    assert re.search(r"^1x_cpu_\w+\s+cpu\s+1\s+.*available", out, re.M)  # hardware, with fit for the model
    endpoint_row = r"^(endpoint-\S+\s+)?admin/my-model-\w+\s+.*\badmin/my-model\s+\S+\s+STARTED\s+1/1"
    assert re.search(endpoint_row, out, re.M), out  # endpoints list: its name, model, hardware, state
    # Progress went to stderr: each stage of both jobs, as it happened, and the endpoint's states.
    for stage in ("extracting", "validating", "admitting", "storing", "registering"):
        assert re.search(rf"\d\d:\d\d\s+{stage}\s", err), (stage, err)
    assert err.count("Complete") >= 2 and "STARTED" in err and "STOPPED" in err
    assert "Traceback" not in err
    # The endpoint is stopped; both chats answered with text (the tiny model's words are nonsense).
    endpoints = httpx.get(f"{server.url}/v1/endpoints", headers={"Authorization": f"Bearer {server.admin_key}"})
    assert [e["state"] for e in endpoints.json()["data"]] == ["STOPPED"]


@pytest.mark.db_agnostic
def test_failures_exit_with_their_code_and_a_hint(server: Server, tiny_llama: Path, hub: FakeHub) -> None:
    missing = server.cli("models", "get", "nope")
    assert missing.returncode == 4 and "model 'nope' not found" in missing.stderr
    assert "modelport models list" in missing.stderr and missing.stdout == ""
    assert server.cli("endpoints", "get", "endpoint-nope").returncode == 4
    refused = server.cli("models", "list", key="mp-not-a-key")
    assert refused.returncode == 3 and "invalid API key" in refused.stderr and "--api-key" in refused.stderr
    down = server.cli("--base-url", "http://127.0.0.1:9", "models", "list")
    assert down.returncode == 6 and "cannot reach modelport" in down.stderr and "modelport serve" in down.stderr
    assert server.cli("models", "frobnicate").returncode == 2
    for result in (missing, refused, down):
        assert "Traceback" not in result.stderr
    debug = server.cli("models", "get", "nope", "--debug")
    assert debug.returncode == 4 and "Traceback" in debug.stderr

    # A job that fails while --wait watches it: exit 5, every problem listed, and what to do. (From a hub
    # repo: a local folder like this one is refused before anything is sent.)
    hub.add(
        "acme/bad-model", {**files_of(tiny_llama), "pytorch_model.bin": b"pickle", "modeling_evil.py": b"import os\n"}
    )
    failed = server.cli("models", "upload", "--model-name", "bad", "--model-source", "acme/bad-model", "--wait")
    assert failed.returncode == 5, failed.stderr
    assert "pytorch_model.bin: pickle weight formats" in failed.stderr
    assert "modeling_evil.py: custom Python code is refused" in failed.stderr
    assert "failed (validation_failed)" in failed.stderr and "modelport jobs get job-" in failed.stderr
    assert "fix every problem listed" in failed.stderr
    job_id = failed.stdout.strip()
    watched = server.cli("jobs", "watch", job_id)
    assert watched.returncode == 5
    shown = server.cli("jobs", "get", job_id)
    assert shown.returncode == 0 and "Failed" in shown.stdout and "pytorch_model.bin" in shown.stdout

    # --json: stdout holds exactly the API's JSON, before or after the command.
    for args in (("--json", "jobs", "list"), ("jobs", "list", "--json")):
        listed = json.loads(server.cli(*args).stdout)
        assert [j["job_id"] for j in listed] == [job_id] and listed[0]["status"] == "Failed"


def test_keys_are_managed_over_http(server: Server) -> None:
    key_file = server.home / "data" / "admin-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and server.admin_key not in server.proc.output()
    bob_key = server.cli("keys", "create", "--account", "bob").stdout.strip()
    assert bob_key.startswith("mp-")
    assert server.cli("whoami", key=bob_key).stdout.strip() == "bob"
    # An account sees and manages only its own keys; creating keys for others is the administrator's.
    bob_keys = json.loads(server.cli("keys", "list", "--json", key=bob_key).stdout)
    assert [k["account"] for k in bob_keys] == ["bob"] and bob_key not in json.dumps(bob_keys)
    denied = server.cli("keys", "create", "--account", "carol", key=bob_key)
    assert denied.returncode == 3 and "administrator" in denied.stderr
    admin_keys = json.loads(server.cli("keys", "list", "--json").stdout)
    admin_key_id = next(k["id"] for k in admin_keys if k["account"] == "admin")
    assert server.cli("keys", "revoke", admin_key_id, key=bob_key).returncode == 4
    second = server.cli("keys", "create", "--name", "laptop", key=bob_key).stdout.strip()  # bob makes another
    assert server.cli("whoami", key=second).stdout.strip() == "bob"
    # The administrator revokes bob's first key: it stops working at once, the second still works.
    bob_first = next(k["id"] for k in bob_keys)
    assert server.cli("keys", "revoke", bob_first).returncode == 0
    assert server.cli("whoami", key=bob_key).returncode == 3
    assert server.cli("whoami", key=second).returncode == 0
    table = server.cli("keys", "list", "--account", "bob").stdout
    assert re.search(rf"^{bob_first}\s+-\s+bob\s+mp-\S+\s+revoked", table, re.M), table
    # The named one, with the minute it was last used (by the whoami above).
    assert re.search(r"^key-\S+\s+laptop\s+bob\s+mp-\S+\s+active\s+\S+ \S+\s+\d{4}-\d\d-\d\d \d\d:\d\d", table, re.M), (
        table
    )


def _pane(session: str) -> str:
    shown = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else f"(no pane: {shown.stderr.strip()})"


def _wait_pane(session: str, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, screen := _pane(session), re.M):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared:\n{_pane(session)}")


@pytest.mark.db_agnostic
@pytest.mark.skipif(
    shutil.which("tmux") is None and os.environ.get("CI") != "true",
    reason="tmux is not installed (.ci/run installs it)",
)
def test_interactive_chat_in_a_terminal(server: Server, tiny_llama: Path) -> None:
    upload = server.cli("models", "upload", "--model-name", "tiny", "--model-source", str(tiny_llama), "--wait")
    assert upload.returncode == 0, upload.stderr
    session = f"mp-chat-{os.getpid()}"
    command = (
        f"MODELPORT_BASE_URL={server.url} MODELPORT_API_KEY={server.admin_key} NO_COLOR=1 "
        f"{modelport_exe()} chat tiny --system 'Be brief.' --max-tokens 6 --temperature 0; "
        "echo EXIT=$?; sleep 30"
    )
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", command], check=True)
    try:
        _wait_pane(session, r"Chatting with tiny\. .*/reset")
        subprocess.run(["tmux", "send-keys", "-t", session, "hello there", "Enter"], check=True)
        screen = _wait_pane(session, r"^>>> hello there\n.+\n>>>")
        first_reply = screen.split(">>> hello there\n")[1].splitlines()[0]
        assert first_reply.strip()
        # The same message after /reset gets the same greedy reply: the history really was cleared.
        subprocess.run(["tmux", "send-keys", "-t", session, "/reset", "Enter"], check=True)
        _wait_pane(session, r"conversation cleared")
        subprocess.run(["tmux", "send-keys", "-t", session, "hello there", "Enter"], check=True)
        screen = _wait_pane(session, r"cleared\)\n>>> hello there\n.+\n>>>")
        assert screen.split("cleared)\n>>> hello there\n")[1].splitlines()[0] == first_reply
        subprocess.run(["tmux", "send-keys", "-t", session, "C-d"], check=True)
        _wait_pane(session, r"^EXIT=0$")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
