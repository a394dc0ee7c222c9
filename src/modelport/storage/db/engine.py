"""Engine and session factory; migrations run here at start-up.

Secrets (a job's Hugging Face token and presigned URL) are deleted as soon as their job ends, and on
SQLite deleted must mean gone from the files, not only from queries: ``secure_delete`` overwrites
deleted rows with zeros, and a session that deleted a secret (``scrub_after_commit``) checkpoints the
write-ahead log into the database and truncates it once it commits, so the old pages that still hold
the secret leave ``modelport.db-wal`` too. PostgreSQL keeps dead row versions until VACUUM reclaims
them; protect its files as the operator protects the server's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "modelport_read_only"
_SCRUB = "modelport_scrub"


def scrub_after_commit(s: Session) -> None:
    """Mark a session that deleted secrets: once it commits, ``Database.scrub`` removes their bytes."""
    s.info[_SCRUB] = True


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; issue it ourselves so that writers take
        # the database lock at the start of a transaction and never fail upgrading a read lock.
        # Read-only sessions (``Database.read``) begin deferred: in WAL mode they never wait for a
        # writer, so polling a job or checking a key stays fast while ingests write progress.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def is_database_down(exc: BaseException) -> bool:
    """A lost or refused database connection rather than a bug in a query: retrying can work."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _sqlite_begin(conn: Any) -> None:
    readonly = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" listener control transactions
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA secure_delete=ON")  # deleted rows (secrets) are overwritten, not just unlinked
    cur.close()


def migrate(engine: Engine, to: str = "head") -> None:
    """Bring the schema to the newest revision (idempotent; safe with several processes on PostgreSQL).
    ``to``: an older revision, for tests of a migration's data step."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise concurrent starts: two servers migrating at once would race on DDL.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7342001)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, to)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """Owns the engine; hands out sessions as context managers that commit or roll back."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            with s.begin():
                yield s
            if s.info.pop(_SCRUB, False):
                self.scrub()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session that only reads: it never waits behind writers on SQLite (see ``make_engine``)."""
        with self._reads() as s, s.begin():
            yield s

    def scrub(self) -> None:
        """SQLite: copy the write-ahead log into the database and truncate it, so pages that held deleted
        rows (already zeroed there by ``secure_delete``) survive in neither file. Other databases: nothing."""
        if self.engine.dialect.name != "sqlite":
            return
        raw = self.engine.raw_connection()  # outside any transaction: a checkpoint cannot run inside one
        try:
            cur = raw.cursor()
            busy, _, _ = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            cur.close()
        finally:
            raw.close()
        if busy:  # a reader held an old snapshot for longer than busy_timeout; the next scrub gets it
            log.warning("could not truncate the SQLite write-ahead log now; deleted secrets stay in it until later")

    def dispose(self) -> None:
        self.engine.dispose()
