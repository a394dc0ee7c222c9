"""Migration 0008 makes each existing endpoint one deployment of a route of its own, under the same name,
with all the traffic (on SQLite and PostgreSQL); the schema check is ``test_revision_migration.py``'s."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from modelport.storage.db.engine import make_engine, migrate
from tests.conftest import database

NOW = "2026-01-02 03:04:05+00:00"
ROWS = [
    "INSERT INTO accounts (id, name, is_admin, created_at) VALUES ('acc', 'acme', false, :now)",
    "INSERT INTO models (id, account_id, name, name_key, kind, status, source_kind, source, total_bytes, "
    "created_at, last_revision) VALUES ('model-1', 'acc', 'acme/chat', 'acme/chat', 'model', 'ready', "
    "'huggingface', 'acme/chat', 0, :now, 1)",
    "INSERT INTO endpoints (id, account_id, name, display_name, model_id, hardware, state, desired, min_replicas, "
    "max_replicas, disable_speculative_decoding, disable_prompt_cache, restarts, created_at, updated_at) VALUES "
    "('endpoint-1', 'acc', 'acme/chat-1a2b', 'chat', 'model-1', 'cpu', 'STARTED', 'STARTED', 2, 3, false, false, "
    "0, :now, :now)",
]


def test_each_endpoint_becomes_the_one_deployment_of_its_own_route(tmp_path: Path) -> None:
    with database(tmp_path) as url:
        engine = make_engine(url)
        try:
            migrate(engine, to="0007")
            with engine.begin() as conn:
                for sql in ROWS:
                    conn.execute(text(sql), {"now": NOW})
            migrate(engine)
            with engine.connect() as conn:
                [route] = conn.execute(text("SELECT id, account_id, name, traffic, etag FROM routes")).all()
                deployment = conn.execute(
                    text("SELECT route_id, label, replicas, traffic_mode, etag FROM endpoints")
                ).one()
        finally:
            engine.dispose()
    traffic = route.traffic if isinstance(route.traffic, list) else json.loads(route.traffic)
    assert route.id.startswith("ep_") and (route.account_id, route.name) == ("acc", "acme/chat-1a2b")
    assert traffic == [{"deployment_id": "endpoint-1", "weight": 1.0}] and route.etag
    assert (deployment.route_id, deployment.label, deployment.replicas) == (route.id, "chat-1a2b", 2)
    assert deployment.traffic_mode == "TRAFFIC_MODE_LIVE" and deployment.etag
