"""Migrations run when the platform starts (or on `modelport db upgrade`), never when it is built."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from modelport.app import create_app
from modelport.cli.main import cli
from modelport.settings import Settings
from modelport.storage.db.engine import current_revision


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_building_the_app_touches_no_database_and_starting_it_migrates(tmp_path: Path, db_url: str) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=db_url, engine="fake"), run_workers=False)
    assert "models" not in _tables(db_url)
    with TestClient(app) as client:
        assert "models" in _tables(db_url)
        assert client.get("/health").status_code == 200


def test_db_upgrade_migrates_once_and_then_says_so(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPORT_DATABASE_URL", db_url)
    monkeypatch.setenv("MODELPORT_DATA_DIR", str(tmp_path / "data"))
    first = CliRunner().invoke(cli, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "upgraded from an empty database to " in first.output
    engine = create_engine(db_url)
    head = current_revision(engine)
    engine.dispose()
    assert head is not None and head in first.output
    again = CliRunner().invoke(cli, ["db", "upgrade"])
    assert again.exit_code == 0 and f"already at {head}" in again.output
