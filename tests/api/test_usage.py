"""Usage per account, model and day: what the responses reported is what ``GET /api/v1/usage`` and
``modelport usage`` show, to whom, after a restart, and when servers write at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from modelport.accounts.service import Principal
from modelport.app import create_app
from modelport.cli.main import cli
from modelport.services import Services
from modelport.serving.observe import Kind, Outcome, Served
from modelport.serving.usage import UsageLedger
from modelport.settings import Settings
from modelport.storage.db.engine import Database, migrate
from modelport.storage.db.tables import Account, UsageDay
from tests.api.conftest import minilm_files
from tests.conftest import database, make_settings
from tests.integration.helpers import upload
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of, make_llama

Totals = dict[str, int]
COUNTED = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


@dataclass
class World:
    """A database where ``acme`` and ``bob`` used models through a server that has since stopped."""

    settings: Settings
    keys: dict[str, str]  # account -> API key; ``root`` is the administrator
    expected: dict[str, dict[str, Totals]]  # account -> model -> totals from the responses' usage fields


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _add(totals: dict[str, Totals], model: str, usage: dict[str, Any]) -> None:
    row = totals.setdefault(model, dict.fromkeys(COUNTED, 0))
    row["requests"] += 1
    row["prompt_tokens"] += usage["prompt_tokens"]
    row["completion_tokens"] += usage.get("completion_tokens", 0)
    row["total_tokens"] += usage["total_tokens"]


def _streamed_usage(client: TestClient, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", path, json=body, headers=_headers(key)) as resp:
        assert resp.status_code == 200, resp.read()
        events = [
            json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:") and "[DONE]" not in line
        ]
    usage: dict[str, Any] = events[-1]["usage"]
    return usage


def _use(client: TestClient, key: str, model: str, embedder: str | None) -> dict[str, Totals]:
    """Chat (whole and streamed), completions (n=2: one request) and embeddings; their reported usage."""
    seen: dict[str, Totals] = {}
    chat = {"model": model, "messages": [{"role": "user", "content": "hello there, how are you"}], "max_tokens": 5}
    resp = client.post("/v1/chat/completions", json=chat, headers=_headers(key))
    assert resp.status_code == 200, resp.text
    _add(seen, model, resp.json()["usage"])
    _add(seen, model, _streamed_usage(client, "/v1/chat/completions", {**chat, "max_tokens": 3}, key))
    plain = {"model": model, "prompt": "one two three four", "max_tokens": 4, "n": 2}
    resp = client.post("/v1/completions", json=plain, headers=_headers(key))
    assert resp.status_code == 200, resp.text
    _add(seen, model, resp.json()["usage"])
    _add(seen, model, _streamed_usage(client, "/v1/completions", {**plain, "n": 1}, key))
    if embedder:
        resp = client.post(
            "/v1/embeddings", json={"model": embedder, "input": ["a cat", "a dog"]}, headers=_headers(key)
        )
        assert resp.status_code == 200, resp.text
        _add(seen, embedder, resp.json()["usage"])
    return seen


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("usage")
    llama = make_llama(tmp / "tiny")
    hub.add("acme/usage-tiny", files_of(llama))
    hub.add("acme/usage-minilm", minilm_files())
    with database(tmp) as url:
        # Admission off (the fake engine runs no weights) and no timed flush: only stop can write the counts.
        settings = make_settings(tmp, url, hub.url, engine="fake", admission_max_bytes=0, usage_flush_interval_s=3600)
        app = create_app(settings, run_workers=False)
        services: Services = app.state.services
        services.prepare()
        keys = {name: services.accounts.create_key(name) for name in ("acme", "bob")}
        keys["root"] = services.accounts.create_key("root", admin=True)
        for name, source in (("acme", "acme/usage-tiny"), ("bob", "acme/usage-tiny")):
            who = services.accounts.authenticate(keys[name])
            assert upload(services, who, "tiny", source).job.status == "Complete"
        acme = services.accounts.authenticate(keys["acme"])
        assert upload(services, acme, "minilm", "acme/usage-minilm").job.status == "Complete"
        with TestClient(app) as client:
            expected = {
                "acme": _use(client, keys["acme"], "acme/tiny", "acme/minilm"),
                "bob": _use(client, keys["bob"], "bob/tiny", None),
            }
            assert services.usage.pending(), "counted in memory, not yet written"
        yield World(settings, keys, expected)


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    """A new server on the same database: it holds no counts of its own."""
    with TestClient(create_app(world.settings, run_workers=False)) as client:
        yield client


def _usage(client: TestClient, key: str, status: int = 200, **params: str) -> list[dict[str, Any]]:
    resp = client.get("/api/v1/usage", params=params, headers=_headers(key))
    assert resp.status_code == status, resp.text
    body = resp.json()
    if status != 200:
        return [body]
    assert body["object"] == "list"
    rows: list[dict[str, Any]] = body["data"]
    return rows


def _by_model(rows: list[dict[str, Any]], account: str) -> dict[str, Totals]:
    """Totals per model (over days: a test may straddle midnight UTC)."""
    totals: dict[str, Totals] = {}
    for row in rows:
        if row["account"] == account:
            into = totals.setdefault(row["model"], dict.fromkeys(COUNTED, 0))
            for k in COUNTED:
                into[k] += row[k]
    return totals


def test_counts_match_the_responses_and_survive_a_restart(world: World, client: TestClient) -> None:
    rows = _usage(client, world.keys["acme"])
    assert _by_model(rows, "acme") == world.expected["acme"]
    assert world.expected["acme"]["acme/tiny"]["requests"] == 4  # n=2 is one request
    assert world.expected["acme"]["acme/minilm"]["completion_tokens"] == 0
    assert {r["account"] for r in rows} == {"acme"}
    row = rows[0]
    assert set(row) == {"account", "model", "date", *COUNTED}
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    assert rows == sorted(rows, key=lambda r: (r["date"], r["account"], r["model"]))


def test_an_account_sees_only_its_own(world: World, client: TestClient) -> None:
    assert _by_model(_usage(client, world.keys["bob"]), "bob") == world.expected["bob"]
    assert {r["account"] for r in _usage(client, world.keys["bob"])} == {"bob"}
    assert _usage(client, world.keys["bob"], account="acme") == []  # as if empty: not even whether acme exists
    assert _usage(client, world.keys["bob"], account="nobody") == []
    assert _usage(client, world.keys["bob"], model="acme/tiny") == []


def test_the_administrator_sees_every_account(world: World, client: TestClient) -> None:
    rows = _usage(client, world.keys["root"])
    assert {r["account"] for r in rows} == {"acme", "bob"}
    for account in ("acme", "bob"):
        assert _by_model(rows, account) == world.expected[account]
        only = _usage(client, world.keys["root"], account=account)
        assert {r["account"] for r in only} == {account}
    assert _usage(client, world.keys["root"], account="nobody") == []
    assert {r["account"] for r in _usage(client, world.keys["root"], model="bob/tiny")} == {"bob"}


def test_date_filters_and_bad_dates(world: World, client: TestClient) -> None:
    key = world.keys["acme"]
    days = sorted({r["date"] for r in _usage(client, key)})
    assert _usage(client, key, since=days[0], until=days[-1]) == _usage(client, key)
    assert _usage(client, key, until="2000-01-01") == []
    assert _usage(client, key, since="2999-01-01") == []
    [error] = _usage(client, key, 400, since="yesterday", until="2024-02-30")
    assert error["error"]["code"] == "invalid_request" and error["error"]["param"] == "since"
    assert "since" in error["error"]["message"] and "until" in error["error"]["message"]
    [error] = _usage(client, key, 400, since="2024-05-02", until="2024-05-01")
    assert error["error"]["param"] == "since"


def test_a_request_shows_at_once_on_its_server(world: World, client: TestClient) -> None:
    key = world.keys["bob"]
    before = _by_model(_usage(client, key), "bob")["bob/tiny"]
    resp = client.post(
        "/v1/completions", json={"model": "tiny", "prompt": "x y", "max_tokens": 2}, headers=_headers(key)
    )
    assert resp.status_code == 200, resp.text
    after = _by_model(_usage(client, key), "bob")["bob/tiny"]
    assert after["requests"] == before["requests"] + 1
    assert after["total_tokens"] == before["total_tokens"] + resp.json()["usage"]["total_tokens"]


def test_cli_prints_a_table_with_totals(world: World) -> None:
    app = create_app(world.settings, run_workers=False)
    with serve_in_thread(app) as url:
        base = ["--base-url", url, "--api-key", world.keys["root"]]
        table = CliRunner().invoke(cli, ["usage", *base, "--account", "acme"], env={"COLUMNS": "200"})
        assert table.exit_code == 0, table.output
        as_json = CliRunner().invoke(cli, ["usage", *base, "--json"])
        bad = CliRunner().invoke(cli, ["usage", *base, "--since", "May"])
    acme = _by_model(json.loads(as_json.output), "acme").values()
    [total] = [line.split() for line in table.output.splitlines() if line.strip().startswith("total")]
    assert total[1:] == [f"{sum(t[k] for t in acme):,}" for k in COUNTED]
    assert "acme/minilm" in table.output and "bob/tiny" not in table.output
    assert {r["account"] for r in json.loads(as_json.output)} == {"acme", "bob"}
    assert bad.exit_code == 1 and "--since" in bad.output


# --- the ledger itself, on the database under test ------------------------------------------------
def _served(account_id: str, model: str, prompt: int = 3, completion: int = 5) -> Served:
    return Served(account_id, model, Kind.TEXT, "fake", prompt, completion, Outcome.OK, 0.01)


def _admin(account_id: str = "acct-root") -> Principal:
    return Principal(account_id, "root", "key-x", is_admin=True)


def test_concurrent_flushes_from_two_ledgers_add_up(services: Services, alice: Principal) -> None:
    """Two servers' ledgers on one database, one flushing from its thread and one by hand, both at once."""
    ledgers = [UsageLedger(Database(services.settings.database_url), 0.005) for _ in range(2)]
    ledgers[0].start()
    start, per_thread = threading.Barrier(4), 300

    def count(ledger: UsageLedger, model: str, manual: bool) -> None:
        start.wait()
        for i in range(per_thread):
            ledger.finished(_served(alice.account_id, model))
            if manual and i % 7 == 0:
                ledger.flush()

    threads = [
        threading.Thread(target=count, args=(ledgers[n % 2], model, n % 2 == 1))
        for n, model in enumerate(("alice/a", "alice/a", "alice/b", "alice/a"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ledger in ledgers:
        ledger.stop()
    rows = ledgers[1].list(_admin())
    assert {r.model: r.requests for r in rows} == {"alice/a": 3 * per_thread, "alice/b": per_thread}
    assert sum(r.prompt_tokens for r in rows) == 3 * 4 * per_thread
    assert sum(r.completion_tokens for r in rows) == 5 * 4 * per_thread
    with services.db.read() as s:
        assert s.scalar(select(func.count()).select_from(UsageDay)) == 2  # one row per (account, model, day)
    for ledger in ledgers:
        ledger.db.dispose()


def test_usage_of_a_deleted_account_does_not_block_the_rest(services: Services, alice: Principal) -> None:
    ledger = UsageLedger(services.db, 3600)
    ledger.finished(_served("acct-gone", "gone/m"))
    ledger.finished(_served(alice.account_id, "alice/m"))
    assert ledger.flush() == 1 and ledger.pending() == {}
    assert [(r.account, r.model, r.requests) for r in ledger.list(alice)] == [("alice", "alice/m", 1)]
    assert ledger.list(alice, since=date(2999, 1, 1)) == []


@pytest.mark.db_agnostic  # a database that is not there yet: a SQLite file in a folder still to be made
def test_counts_wait_for_the_database_and_the_thread_survives(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    db = Database(f"sqlite:///{folder / 'modelport.db'}")
    ledger = UsageLedger(db, 0.02)
    ledger.start()
    for _ in range(3):
        ledger.finished(_served("acct-x", "x/m", 2, 7))
    time.sleep(0.2)  # several failed flushes
    assert ledger._thread is not None and ledger._thread.is_alive()
    assert sum(c.requests for c in ledger.pending().values()) == 3
    # The database appears whole (schema and account at once, by renaming its folder into place): a flush
    # between the schema and the account would drop the counts of an account that does not exist.
    ready = tmp_path / "ready"
    ready.mkdir()
    made = Database(f"sqlite:///{ready / 'modelport.db'}")
    migrate(made.engine)
    with made.session() as s:
        s.add(Account(id="acct-x", name="x"))
    made.dispose()
    ready.rename(folder)
    deadline = time.monotonic() + 5
    while ledger.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    ledger.stop()
    [row] = ledger.list(Principal("acct-x", "x", "key-x"))
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 6, 21)
    db.dispose()
