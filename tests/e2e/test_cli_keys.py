"""`modelport serve` on an empty database, and `modelport keys` against the same database."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import server_env
from tests.support.fakehub import FakeHub
from tests.support.procs import modelport_exe, start_modelport

pytestmark = pytest.mark.e2e


def whoami(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v3/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_first_start_writes_an_admin_key_and_keys_commands_manage_more(
    tmp_path: Path, db_url: str, hub: FakeHub
) -> None:
    env = server_env(tmp_path, db_url, hub, key="")
    env.pop("MODELPORT_BOOTSTRAP_API_KEY")
    env.pop("MODELPORT_BOOTSTRAP_ACCOUNT")
    proc, url = start_modelport(env, tmp_path / "server.log")
    try:
        key_file = tmp_path / "data" / "admin-api-key"
        admin_key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert whoami(url, admin_key).json()["organization"]["name"] == "admin"
        assert admin_key not in proc.output()

        def keys(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [modelport_exe(), "keys", *args],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )

        bob_key = keys("create", "--account", "bob").stdout.strip()
        assert bob_key.startswith("mp-") and whoami(url, bob_key).json()["organization"]["name"] == "bob"
        listed = keys("list", "--account", "bob").stdout
        assert bob_key not in listed and "active" in listed
        keys("revoke", listed.split()[0])
        assert whoami(url, bob_key).status_code == 401
        assert whoami(url, admin_key).status_code == 200
    finally:
        proc.stop()
