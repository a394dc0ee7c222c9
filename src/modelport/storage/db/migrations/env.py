"""Alembic environment: always called with a live connection from ``engine.migrate``."""

from alembic import context

from modelport.storage.db.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
