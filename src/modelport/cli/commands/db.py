"""``modelport db``: the database's schema, without starting a server."""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """The database's schema (MODELPORT_DATABASE_URL)."""


@db.command()
def upgrade() -> None:
    """Bring the database to the newest schema. The server and workers also do this when they start;
    run it first to migrate once, before starting many of them."""
    from modelport.settings import Settings
    from modelport.storage.db.engine import Database, current_revision, migrate

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives there
    database = Database(settings.database_url)
    try:
        before = current_revision(database.engine)
        migrate(database.engine)
        after = current_revision(database.engine)
    finally:
        database.dispose()
    moved = f"upgraded from {before or 'an empty database'} to {after}" if before != after else f"already at {after}"
    click.echo(f"database {settings.database_url.split('@')[-1]}: {moved}", err=True)
