"""`modelport models upload` from a local folder: refused before any byte when it is not a model's own
folder, packed with only what the server keeps, sent in parts and resumed; `modelport uploads`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport.cli import upload
from modelport.cli.client import ApiError, Client
from modelport.cli.pack import pack_directory
from tests.conftest import database
from tests.e2e.conftest import Live, server_env
from tests.support.fakehub import FakeHub
from tests.support.procs import modelport_exe, start_modelport
from tests.support.tinymodels import make_llama

# Client conformance: what the clients see does not depend on the database.
pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]


@pytest.fixture(scope="module")
def mp(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Live]:
    """One live server for the module: each test names its own models and checks what it changed."""
    home = tmp_path_factory.mktemp("cli-upload")
    with database(home) as db_url:
        key = "mp-e2e-upload-key-0123456789abcdef"
        env = server_env(home, db_url, hub, key)
        proc, url = start_modelport(env, home / "server.log")
        yield Live(url, key, proc, env)
        proc.stop()


def run(live: Live, *args: str, cwd: Path | None = None, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELPORT_API_KEY": live.key, "MODELPORT_BASE_URL": live.url, "NO_COLOR": "1"}
    env.update(COLUMNS="200", XDG_CACHE_HOME=str(Path(live.env["MODELPORT_DATA_DIR"]).parent / "cli-cache"))
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [modelport_exe(), *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # not a terminal: never asked to confirm
        capture_output=True,
        text=True,
        timeout=120,
    )


def models_upload(
    live: Live, name: str, source: str, *more: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run(live, "models", "upload", "--model-name", name, "--model-source", source, *more, cwd=cwd)


def server_state(live: Live) -> dict[str, Any]:
    """Everything an upload could leave behind: rows behind three APIs, files, and requests that sent bytes."""
    data = Path(live.env["MODELPORT_DATA_DIR"])
    log = live.proc.output()
    return {
        "uploads": sorted(u["id"] for u in live.get("/api/v1/uploads")["data"]),
        "jobs": sorted(j["job_id"] for j in live.get("/v1/jobs")["data"]),
        "models": sorted(m["id"] for m in live.get("/v1/models")["data"]),
        "upload_folders": sorted(p.name for p in (data / "uploads").glob("*")),
        "blobs": sorted(str(p) for p in (data / "blobs").rglob("*") if p.is_file()),
        "byte_requests": log.count("POST /api/v1/uploads ") + log.count("PUT /api/v1/uploads/"),
    }


def test_cli_uploads_a_local_folder_and_resumes(mp: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(Path(mp.env["MODELPORT_DATA_DIR"]).parent / "cli-cache"))
    folder = make_llama(tmp_path / "local-model", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    (folder / "README.md").write_text("# not sent\n")
    # The first attempt dies after two parts (as if the network dropped).
    archive = pack_directory(folder, tmp_path / "first.tar")
    client = Client(mp.url, mp.key)
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
    parts_before = mp.proc.output().count("PUT /api/v1/uploads/")

    # The CLI packs the same folder to the same bytes, finds the earlier upload, sends only the rest.
    out = models_upload(mp, "local", str(folder), "--wait")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert mp.get(f"/v1/jobs/{job_id}")["status"] == "Complete"
    total_parts = -(-archive.stat().st_size // (16 * 1024))
    resent = mp.proc.output().count("PUT /api/v1/uploads/") - parts_before
    assert resent == total_parts - 2
    # It said what it sent, in sizes for people; README.md stayed behind.
    assert f"sending {folder}: 5 files," in out.stderr and "model.safetensors" in out.stderr
    assert "left out 1 file that serving does not use (README.md)" in out.stderr
    names = [f["path"] for f in mp.get("/v1/models/devuser/local")["manifest"]["files"]]
    assert "README.md" not in names and "model.safetensors" in names
    # --wait saw the job end: the archive it read is gone from the server.
    assert mp.get("/api/v1/uploads")["data"] == [] and "uploads delete" not in out.stderr

    # The name is now taken: refused before any byte, in the words of the flags.
    before = server_state(mp)
    bad = models_upload(mp, "local", str(folder))
    assert bad.returncode == 1 and "Model name already exists" in bad.stderr and "Traceback" not in bad.stderr
    assert "--model-name" in bad.stderr and "model_name" not in bad.stderr.replace("--model-name", "")
    assert "modelport models delete local" in bad.stderr  # the hint: what to run next
    assert server_state(mp) == before


def test_what_is_not_a_model_folder_never_reaches_the_server(mp: Live, tmp_path: Path, tiny_lora: Path) -> None:
    """The README walkthrough with PRESIGNED_URL unset: `--model-source ""` in a project folder."""
    project = make_llama(tmp_path / "project")  # even with a model's files at its top
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / ".venv" / "bin" / "activate").write_text("# as `python -m venv` writes it\n")
    (project / "data").mkdir()
    (project / "data" / "admin-api-key").write_text("mp-secret\n")
    home = tmp_path / "home"
    home.mkdir()
    pickled = make_llama(tmp_path / "pickled")
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    data_dir = mp.env["MODELPORT_DATA_DIR"]
    before = server_state(mp)

    cases: list[tuple[tuple[str, ...], Path | None, int, str]] = [
        (("",), project, 2, "--model-source is empty"),
        ((".",), project, 2, "./ is the current folder"),
        (("./project",), tmp_path, 2, "./project holds .git, .venv (a virtual environment) and data/admin-api-key"),
        ((data_dir,), None, 2, "holds blobs/ (modelport's data dir)"),  # its database is elsewhere here
        ((str(project / "data" / "admin-api-key"),), None, 2, "is not a .zip, .tar or .tar.gz archive"),
        (("./nope",), tmp_path, 2, "no such file or folder: ./nope"),
        (("my-model.tar.gz",), tmp_path, 2, "no such file or folder: my-model.tar.gz"),
        ((str(pickled),), None, 1, "pytorch_model.bin: pickle weight formats"),
        ((str(tiny_lora),), None, 2, "is a LoRA adapter"),
        ((str(project / ".git"),), None, 2, "holds no config.json or adapter_config.json"),
    ]
    for args, cwd, code, said in cases:
        result = models_upload(mp, "nothing", *args, cwd=cwd)
        assert (result.returncode, said in result.stderr) == (code, True), (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
    lora = models_upload(mp, "nothing", str(tiny_lora))
    assert "--model-type adapter --base-model" in lora.stderr
    at_home = run(mp, "models", "upload", "--model-name", "x", "--model-source", "~", home=home, cwd=tmp_path)
    assert at_home.returncode == 2 and "is your home folder" in at_home.stderr
    assert server_state(mp) == before


def test_the_servers_refusals_name_the_flags(mp: Live, tiny_llama: Path, tiny_lora: Path) -> None:
    """Needs POST /api/v1/models/preflight: refused before any byte, not after the upload."""
    before = server_state(mp)
    base = models_upload(mp, "lora", str(tiny_lora), "--model-type", "adapter", "--base-model", "tiny-lama")
    assert base.returncode == 1, base.stderr
    assert "base model 'tiny-lama' is not one of your models" in base.stderr  # and what the names are
    assert "--base-model" in base.stderr and "base_model" not in base.stderr and "GET /v1" not in base.stderr
    assert "modelport models list" in base.stderr
    wrong = models_upload(mp, "m", str(tiny_llama), "--base-model", "devuser/local")
    assert wrong.returncode == 1 and "--base-model and --lora-model only apply to --model-type" in wrong.stderr
    scheme = models_upload(mp, "m", "ftp://example.com/m.tar")
    assert scheme.returncode == 1 and "--model-source: unsupported source scheme 'ftp'" in scheme.stderr
    assert server_state(mp) == before


def test_uploads_list_and_delete(mp: Live, tmp_path: Path) -> None:
    client = Client(mp.url, mp.key)
    left = client.call("POST", "/api/v1/uploads", json={"filename": "left-behind.tar", "bytes": 3 * 2**20})
    listed = run(mp, "uploads", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(left["id"]))
    assert row.split()[1:5] == ["left-behind.tar", "3.0", "MiB", "receiving"]
    as_json = json.loads(run(mp, "uploads", "list", "--json").stdout)
    assert [u["id"] for u in as_json] == [left["id"]] and as_json[0]["bytes"] == 3 * 2**20
    deleted = run(mp, "uploads", "delete", left["id"], "file-nope")
    assert deleted.returncode == 4 and f"deleted {left['id']}" in deleted.stderr
    assert "no such upload: file-nope" in deleted.stderr and "modelport uploads list" in deleted.stderr
    assert mp.get("/api/v1/uploads")["data"] == []
    assert "No uploads." in run(mp, "uploads", "list").stderr


def test_a_failed_job_takes_its_upload_along(mp: Live, tmp_path: Path, tiny_llama: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    failed = models_upload(mp, "broken", str(broken), "--wait")
    assert failed.returncode == 5 and "not a valid safetensors file" in failed.stderr
    assert "uploads delete" not in failed.stderr and mp.get("/api/v1/uploads")["data"] == []
    # Without --wait the job still needs the archive: the CLI says how to remove it afterwards.
    queued = models_upload(mp, "broken-again", str(broken))
    assert queued.returncode == 0, queued.stderr
    (upload_id,) = [u["id"] for u in mp.get("/api/v1/uploads")["data"]]
    assert f"`modelport uploads delete {upload_id}` removes the uploaded archive" in queued.stderr
    mp.wait_job(queued.stdout.strip())
    assert run(mp, "uploads", "delete", upload_id).returncode == 0


def test_a_big_upload_is_confirmed_on_a_terminal(mp: Live, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from modelport.cli.commands import models
    from modelport.cli.main import cli

    monkeypatch.setattr(models, "CONFIRM_ABOVE_BYTES", 1024)
    monkeypatch.setattr(models, "_on_terminal", lambda: True)
    args = ["--base-url", mp.url, "--api-key", mp.key, "models", "upload", "--model-name", "big"]
    args += ["--model-source", str(tiny_llama)]
    before = server_state(mp)
    declined = CliRunner().invoke(cli, args, input="n\n")
    assert declined.exit_code == 1 and "Send " in declined.stderr and "Aborted" in declined.stderr
    assert f"sending {tiny_llama}: 5 files, 25.9 KiB" in declined.stderr
    assert server_state(mp) == before

    def stop_before_packing(*args: object) -> None:
        raise RuntimeError("reached packing")

    monkeypatch.setattr(models, "pack", stop_before_packing)
    agreed = CliRunner().invoke(cli, [*args, "--yes"])
    assert "reached packing" in agreed.stderr and "Send " not in agreed.stderr
    assert server_state(mp) == before
