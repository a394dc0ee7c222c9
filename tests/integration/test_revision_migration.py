"""Migration 0007 turns each ready model into its own revision 1, files and endpoints included, and the
migrated schema is exactly the one ``tables.py`` declares (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from modelport.storage.db.engine import make_engine, migrate
from modelport.storage.db.tables import Base
from tests.conftest import database

NOW = "2026-01-02 03:04:05+00:00"


def _insert_0006_rows(conn: object) -> None:
    manifest = {
        "kind": "model",
        "type": "chat",
        "total_bytes": 10,
        "files": [{"path": "a.json", "size": 10, "sha256": "ab" * 32}],
    }
    rows = [
        "INSERT INTO accounts (id, name, is_admin, created_at) VALUES ('acc', 'acme', false, :now)",
        "INSERT INTO models (id, account_id, name, name_key, kind, status, type, source_kind, source, manifest, "
        "total_bytes, created_at) VALUES ('model-1', 'acc', 'acme/chat', 'acme/chat', 'model', 'ready', 'chat', "
        "'huggingface', 'acme/chat', :manifest, 10, :now)",
        "INSERT INTO models (id, account_id, name, name_key, kind, status, source_kind, source, total_bytes, "
        "created_at) VALUES ('model-2', 'acc', 'acme/busy', 'acme/busy', 'model', 'uploading', 'upload', 'file-x', "
        "0, :now)",
        "INSERT INTO model_files (model_id, path, size, sha256) VALUES ('model-1', 'a.json', 10, :sha)",
        "INSERT INTO endpoints (id, account_id, name, display_name, model_id, hardware, state, desired, min_replicas, "
        "max_replicas, disable_speculative_decoding, disable_prompt_cache, restarts, created_at, updated_at) VALUES "
        "('ep', 'acc', 'acme/chat-1', 'chat', 'model-1', 'cpu', 'STOPPED', 'STOPPED', 1, 1, false, false, 0, "
        ":now, :now)",
        "INSERT INTO jobs (id, account_id, type, status, model_id, args, attempts, created_at, updated_at) VALUES "
        "('job-1', 'acc', 'model_upload', 'Queued', 'model-2', :args, 0, :now, :now)",
    ]
    for sql in rows:
        values = {
            "now": NOW,
            "manifest": json.dumps(manifest),
            "sha": "ab" * 32,
            "args": json.dumps({"modelName": "x"}),
        }
        conn.execute(text(sql), values)  # type: ignore[attr-defined]


def test_ready_models_become_revision_one_with_their_files_and_endpoints(tmp_path: Path) -> None:
    with database(tmp_path) as url:
        engine = make_engine(url)
        try:
            migrate(engine, to="0006")
            with engine.begin() as conn:
                _insert_0006_rows(conn)
            migrate(engine)
            with engine.connect() as conn:
                query = "SELECT id, model_id, number, status, total_bytes, source, manifest FROM model_revisions"
                [rev, pending] = conn.execute(text(query + " ORDER BY model_id")).all()
                # A job queued across the upgrade makes its model's revision 1, named in its arguments.
                assert (pending.model_id, pending.number, pending.status) == ("model-2", 1, "pending")
                args = conn.execute(text("SELECT args FROM jobs WHERE id = 'job-1'")).scalar()
                args = args if isinstance(args, dict) else json.loads(args)
                assert args == {"modelName": "x", "revisionId": pending.id, "revision": 1}
                assert rev.id.startswith("rev-") and (rev.model_id, rev.number, rev.status) == ("model-1", 1, "ready")
                assert (rev.total_bytes, rev.source) == (10, "acme/chat")
                manifest = rev.manifest if isinstance(rev.manifest, dict) else json.loads(rev.manifest)
                assert manifest["type"] == "chat"
                files = conn.execute(text("SELECT revision_id, path, size FROM revision_files")).all()
                assert [tuple(f) for f in files] == [(rev.id, "a.json", 10)]
                heads = dict(conn.execute(text("SELECT id, revision_id FROM models")).all())  # type: ignore[arg-type]
                assert heads == {"model-1": rev.id, "model-2": None}
                assert conn.execute(text("SELECT revision_id FROM endpoints")).scalar() == rev.id
                names = set(engine.dialect.get_table_names(conn))
                assert "model_files" not in names and {"model_revisions", "revision_files"} <= names
                # Everything tables.py declares, and nothing else.
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
                assert diff == [], diff
        finally:
            engine.dispose()
