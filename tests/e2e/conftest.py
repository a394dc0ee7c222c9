"""A live ``modelport serve`` process, and the official ``together`` clients in their own venvs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import togethervenvs
from tests.support.fakehub import FakeHub
from tests.support.procs import Proc, modelport_exe, start_modelport

REPO = Path(__file__).resolve().parents[2]
TOGETHER_VERSIONS = togethervenvs.VERSIONS
OFFLINE = {"TOGETHER_TELEMETRY_DISABLED": "1", "TOGETHER_DISABLE_VERSION_CHECK": "1"}  # 3.x calls home otherwise


def together_venv(version: str) -> Path:
    """A venv holding exactly this version of the official client (``tests/support/togethervenvs.py``)."""
    return togethervenvs.venv(version)


@dataclass
class Live:
    url: str
    key: str
    proc: Proc
    env: dict[str, str]

    def together(
        self, version: str, *args: str, check: bool = True, base_url: str | None = None, program: str = "together"
    ) -> subprocess.CompletedProcess[str]:
        """Run that version's CLI (3.x: ``program="tg"``) with the base URL 1.x and 2.x want unless told."""
        venv = together_venv(version)
        env = {
            **os.environ,
            **OFFLINE,
            "TOGETHER_BASE_URL": base_url or f"{self.url}/v1",
            "TOGETHER_API_KEY": self.key,
            "NO_COLOR": "1",
            "COLUMNS": "250",
            "TERM": "dumb",
        }
        result = subprocess.run(
            [str(venv / "bin" / program), *args], env=env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"together {version} {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sdk(self, version: str, code: str, base_url: str | None = None) -> Any:
        """Run Python with that client installed; the snippet prints JSON on its last line."""
        venv = together_venv(version)
        env = {**os.environ, **OFFLINE, "TOGETHER_BASE_URL": base_url or f"{self.url}/v1", "TOGETHER_API_KEY": self.key}
        result = subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    def get(self, path: str) -> Any:
        resp = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.key}"}, timeout=10)
        return resp.json()

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}")
            if job["status"] in ("Complete", "Failed"):
                return dict(job)
            time.sleep(0.2)
        raise TimeoutError(job_id)


def server_env(tmp_path: Path, db_url: str, hub: FakeHub, key: str, **extra: str) -> dict[str, str]:
    return {
        "MODELPORT_DATA_DIR": str(tmp_path / "data"),
        "MODELPORT_DATABASE_URL": db_url,
        "MODELPORT_HF_ENDPOINT": hub.url,
        "MODELPORT_FETCH_ALLOW_HTTP": "true",
        "MODELPORT_FETCH_ALLOW": "localhost,127.0.0.1",
        "MODELPORT_BOOTSTRAP_API_KEY": key,
        "MODELPORT_BOOTSTRAP_ACCOUNT": "devuser",
        "MODELPORT_WORKERS": "2",
        "MODELPORT_JOB_POLL_INTERVAL_S": "0.1",
        "MODELPORT_JOB_LEASE_S": "4",
        **extra,
    }


@pytest.fixture
def live(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[Live]:
    key = "mp-e2e-bootstrap-key-0123456789abcdef"
    env = server_env(tmp_path, db_url, hub, key)
    proc, url = start_modelport(env, tmp_path / "server.log")
    yield Live(url, key, proc, env)
    proc.stop()


class Server:
    def __init__(self, proc: Proc, url: str, home: Path, env: dict[str, str]) -> None:
        self.proc, self.url, self.home, self.env = proc, url, home, env
        self.admin_key = (home / "data" / "admin-api-key").read_text().strip()

    def cli(self, *args: str, key: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MODELPORT_BASE_URL": self.url, "MODELPORT_API_KEY": key or self.admin_key}
        env.update(COLUMNS="200", NO_COLOR="1", XDG_CACHE_HOME=str(self.home / "cache"))
        return subprocess.run(
            [modelport_exe(), *args], env=env, capture_output=True, text=True, timeout=180, input=stdin, cwd=self.home
        )


@pytest.fixture
def server(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[Server]:
    """A brand-new install: no bootstrap key, so the server writes ``data/admin-api-key`` as `make serve` does."""
    env = server_env(tmp_path, db_url, hub, key="")
    env.pop("MODELPORT_BOOTSTRAP_API_KEY")
    env.pop("MODELPORT_BOOTSTRAP_ACCOUNT")
    proc, url = start_modelport(env, tmp_path / "server.log")
    yield Server(proc, url, tmp_path, env)
    proc.stop()
