"""``modelport models download``: a revision's files by Together v2's download protocol, written whole or
not at all, skipped when already there, never outside the folder given.

The CLI runs in-process against the real app over HTTP; the last tests give the part fetcher a store
that answers by hand (``httpx.MockTransport``), for what a real one may do: redirect, split a file in
several parts, or answer wrong."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.cli import download
from modelport.cli.errors import CliFailure
from modelport.cli.main import cli
from modelport.ingest import etags
from tests.api.conftest import Served
from tests.conftest import database, make_settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of, make_llama

pytestmark = pytest.mark.db_agnostic


@dataclass
class Live:
    served: Served
    env: dict[str, str]
    v1: dict[str, bytes]  # revision 1's files, as uploaded
    v2: dict[str, bytes]  # revision 2's (the head)

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["models", "download", *args], env=self.env)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Live]:
    """``acme/tiny`` at revision 2 (revision 1 has other weights), and ``rival/secret``, another account's."""
    tmp = tmp_path_factory.mktemp("cli-download")
    with database(tmp) as url:
        app = create_app(make_settings(tmp, url, hub.url), run_workers=False)
        with TestClient(app) as client:
            accounts = app.state.services.accounts
            key, rival_key = accounts.create_key("acme"), accounts.create_key("rival")
            served = Served(client, {"Authorization": f"Bearer {key}"}, key)
            v1, v2 = files_of(make_llama(tmp / "v1", seed=1)), files_of(make_llama(tmp / "v2", seed=2))
            served.upload(hub, "tiny", v1)
            hub.add("acme/tiny-v2", v2)
            added = served.post("/api/v1/models/tiny/revisions", {"model_source": "acme/tiny-v2"})
            assert added.status_code == 202, added.text
            run_all_jobs(app.state.services)
            rival = Served(client, {"Authorization": f"Bearer {rival_key}"}, rival_key)
            rival.upload(hub, "secret", v1)
            with serve_in_thread(app) as base_url:
                env = {"MODELPORT_BASE_URL": base_url, "MODELPORT_API_KEY": key, "COLUMNS": "200"}
                yield Live(served, env, v1, v2)


def _sha256s(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _expected(files: dict[str, bytes], names: set[str]) -> dict[str, str]:
    return {name: hashlib.sha256(files[name]).hexdigest() for name in names}


def _summary(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_downloads_every_file_then_skips_them_all(live: Live, tmp_path: Path) -> None:
    target = tmp_path / "out"
    first = _summary(live.run("acme/tiny", str(target), "--json"))
    got = _sha256s(target)  # no temporary file is left either
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(got) <= set(live.v2)
    assert got == _expected(live.v2, set(got))
    head = live.served.client.get("/v1/models/acme/tiny", headers=live.served.headers).json()["revision_id"]
    total = sum(len(live.v2[name]) for name in got)
    assert first == {"revisionId": head, "path": str(target.resolve()), "files": len(got), "bytes": total, "skipped": 0}

    again = live.run("acme/tiny", str(target))
    assert again.exit_code == 0, again.output
    for name in got:
        assert f"{name}: already here" in again.stderr
    assert f"downloaded 0 files (0 B), skipped {len(got)} already there" in again.stderr
    assert _sha256s(target) == got


def test_files_picks_only_those(live: Live, tmp_path: Path) -> None:
    summary = _summary(live.run("acme/tiny", str(tmp_path), "--files", "config.json", "--json"))
    assert _sha256s(tmp_path) == _expected(live.v2, {"config.json"})
    assert (summary["files"], summary["bytes"], summary["skipped"]) == (1, len(live.v2["config.json"]), 0)


def test_a_revision_by_number(live: Live, tmp_path: Path) -> None:
    pinned = _summary(live.run("acme/tiny@1", str(tmp_path / "at"), "--json"))
    got = _sha256s(tmp_path / "at")
    assert got == _expected(live.v1, set(got)) and "model.safetensors" in got
    assert got["model.safetensors"] != hashlib.sha256(live.v2["model.safetensors"]).hexdigest()
    flag = _summary(live.run("acme/tiny", str(tmp_path / "flag"), "--revision", "1", "--json"))
    assert flag["revisionId"] == pinned["revisionId"] and _sha256s(tmp_path / "flag") == got
    twice = live.run("acme/tiny@1", str(tmp_path), "--revision", "1")
    assert twice.exit_code == 2 and "name the revision once" in twice.output


def test_a_damaged_local_file_is_downloaded_again(live: Live, tmp_path: Path) -> None:
    assert live.run("acme/tiny", str(tmp_path)).exit_code == 0
    weights = tmp_path / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(damaged))
    summary = _summary(live.run("acme/tiny", str(tmp_path), "--json"))
    assert (summary["files"], summary["bytes"]) == (1, len(live.v2["model.safetensors"]))
    assert summary["skipped"] == len(_sha256s(tmp_path)) - 1
    assert weights.read_bytes() == live.v2["model.safetensors"]


def test_what_is_not_there_or_not_yours_is_refused(live: Live, tmp_path: Path) -> None:
    other = live.run("rival/secret", str(tmp_path / "x"))
    assert other.exit_code == 4, other.output
    assert "model 'rival/secret' not found" in other.stderr and "modelport models list" in other.stderr
    assert not (tmp_path / "x").exists()
    missing = live.run("acme/tiny", str(tmp_path / "y"), "--files", "config.json,nope.bin")
    assert missing.exit_code == 4, missing.output
    assert "nope.bin" in missing.stderr and "modelport models get acme/tiny" in missing.stderr
    revision = live.run("acme/tiny@9", str(tmp_path / "z"))
    assert revision.exit_code == 4 and "modelport models revisions acme/tiny" in revision.stderr
    keyless = CliRunner().invoke(
        cli, ["models", "download", "acme/tiny", str(tmp_path)], env={**live.env, "MODELPORT_API_KEY": ""}
    )
    assert keyless.exit_code == 3


# --- the part fetcher against a store that answers by hand ----------------------------------------


def _file(data: bytes, part_sizes: list[int], path: str = "w.bin") -> download.RemoteFile:
    parts, start = [], 0
    for n, size in enumerate(part_sizes, 1):
        headers = {"Range": f"bytes={start}-{start + size - 1}"}
        parts.append(download.Part(n, size, f"https://store.test/{path}?sig=s", headers))
        start += size
    return download.RemoteFile(path, etags.combine([hashlib.md5(data).hexdigest()]), len(data), parts)


def _store(data: bytes, seen: list[httpx.Request], *, stretch: int = 0) -> httpx.MockTransport:
    """Redirects once, then serves ``Range``s of ``data`` (``stretch`` bytes too many)."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "store.test":
            return httpx.Response(307, headers={"Location": f"https://bucket.test{request.url.raw_path.decode()}"})
        first, last = (int(x) for x in request.headers["range"].removeprefix("bytes=").split("-"))
        return httpx.Response(206, content=data[first : last + 1 + stretch])

    return httpx.MockTransport(answer)


def test_parts_land_at_their_offsets_without_the_api_key(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    seen: list[httpx.Request] = []
    placed = download.Placed(_file(data, [4000, 4000, 2240]), tmp_path / "w.bin")
    progress: list[int] = []
    with download.signed_url_client(_store(data, seen)) as http:
        download.fetch(http, placed, progress.append)
    assert (tmp_path / "w.bin").read_bytes() == data and sum(progress) == len(data)
    assert [r.headers["range"] for r in seen if r.url.host == "bucket.test"] == [
        "bytes=0-3999",
        "bytes=4000-7999",
        "bytes=8000-10239",
    ]
    assert all("authorization" not in r.headers for r in seen)
    assert download.is_current(placed)


def test_a_wrong_answer_leaves_no_file(tmp_path: Path) -> None:
    data = b"x" * 1000
    placed = download.Placed(_file(data, [600, 400]), tmp_path / "w.bin")
    with download.signed_url_client(_store(data, [], stretch=1)) as http, pytest.raises(CliFailure, match="longer"):
        download.fetch(http, placed)
    wrong = download.Placed(_file(b"y" * 1000, [1000]), tmp_path / "w.bin")  # its hash is not these bytes'
    with download.signed_url_client(_store(data, [])) as http, pytest.raises(CliFailure, match="do not match"):
        download.fetch(http, wrong)
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_fails_for_a_while_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_DELAYS_S", (0.0, 0.0))
    data = b"z" * 100
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503) if len(calls) < 3 else httpx.Response(200, content=data)

    with download.signed_url_client(httpx.MockTransport(flaky)) as http:
        download.fetch(http, download.Placed(_file(data, [100]), tmp_path / "z.bin"))
    assert (tmp_path / "z.bin").read_bytes() == data and len(calls) == 3
    down = httpx.MockTransport(lambda request: httpx.Response(503))
    with download.signed_url_client(down) as http, pytest.raises(CliFailure, match="HTTP 503"):
        download.fetch(http, download.Placed(_file(data, [100]), tmp_path / "again.bin"))
    assert not (tmp_path / "again.bin").exists()


@pytest.mark.parametrize("path", ["../x", "/etc/x", "a/../../x", "a//b", "./x", "a\\..\\x", "ok/../"])
def test_paths_outside_the_folder_are_refused_before_anything_is_written(tmp_path: Path, path: str) -> None:
    plan = download.Plan("rev", [_file(b"a", [1], "fine.txt"), _file(b"a", [1], path)])
    with pytest.raises(CliFailure, match="outside") as refused:
        download.place(plan, tmp_path / "out")
    assert repr(path) in refused.value.message and "fine.txt" not in refused.value.message


def test_a_symlinked_folder_leading_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path)
    with pytest.raises(CliFailure, match="outside"):
        download.place(download.Plan("rev", [_file(b"a", [1], "sub/x")]), tmp_path / "out")
