"""Usage per account, model and day (UTC): counted in memory as requests finish, written in batches.

``UsageLedger`` is an inference ``Observer`` (``observe.py``). ``finished`` runs on the event loop, so it
only adds the request's counts to a dict under a lock; it never touches the database. A thread writes the
accumulated deltas every ``MODELPORT_USAGE_FLUSH_INTERVAL_S`` in one transaction of upserts that *add* to
the stored rows (``INSERT ... ON CONFLICT (account_id, model, day) DO UPDATE SET requests =
usage_days.requests + excluded.requests, ...``), so any number of server processes can write the same
rows at once. ``stop`` writes what is left; a query writes this process's pending counts first, so a
caller sees its own requests at once (other servers' within their flush interval).

A flush that fails (the database is down) puts its deltas back and the next one retries them: counts are
never dropped while the process lives. The one exception to exactly-once is a connection lost while the
database commits: the deltas are kept, so such a batch may be counted twice, never lost. Usage of an
account deleted meanwhile is dropped (its rows would go with it anyway, ``ondelete=CASCADE``).

Who sees what: an account sees only its own rows; the administrator every account's, and may filter by
account name. A non-administrator who names another account gets an empty list, as ``/api/v1/keys``
answers, so the answer does not even say whether that account exists.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelport.accounts.service import Principal
from modelport.serving.observe import Served
from modelport.storage.db.engine import Database, is_database_down
from modelport.storage.db.tables import Account, UsageDay, utcnow

log = logging.getLogger(__name__)

Key = tuple[str, str, date]  # account id, model name, day (UTC)


@dataclass
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass(frozen=True)
class UsageRow:
    """One account's use of one model on one day."""

    account: str  # the account's name
    model: str
    day: date
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageLedger:
    """Counts what inference served (every outcome is a request; tokens as reported) and writes it."""

    def __init__(self, db: Database, interval_s: float, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db, self.interval_s, self._clock = db, interval_s, clock
        self._pending: dict[Key, Counts] = {}
        self._flushing: dict[Key, Counts] = {}  # the batch a flush is writing: not written until it commits
        self._lock = threading.Lock()  # guards _pending and _flushing, held only to update or swap them
        self._writing = threading.Lock()  # one flush at a time: the thread's, a query's, stop's
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- Observer: called on the event loop --------------------------------------------------------
    def first_token(self, model: str, seconds: float) -> None:
        pass

    def token(self, model: str, gap_s: float) -> None:
        pass

    def finished(self, served: Served) -> None:
        key = (served.account_id, served.model, self._clock().astimezone(UTC).date())
        delta = Counts(1, served.prompt_tokens, served.completion_tokens)
        with self._lock:
            self._pending.setdefault(key, Counts()).add(delta)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is left (once: shutdown does not wait for a database to return)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.flush()
        except Exception:
            log.exception("could not write the last usage counts at shutdown; lost: %s", self.pending())

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.flush()
            except Exception as e:  # the thread must outlive any failure; the deltas wait for the next try
                if is_database_down(e):
                    log.warning("usage not written, the database is unavailable (%s); retrying", type(e).__name__)
                else:
                    log.exception("usage not written; retrying in %.1f s", self.interval_s)

    # --- writing -----------------------------------------------------------------------------------
    def pending(self) -> dict[Key, Counts]:
        """A copy of the counts not yet written, the batch a flush is writing included."""
        merged: dict[Key, Counts] = {}
        with self._lock:
            for source in (self._flushing, self._pending):
                for key, counts in source.items():
                    merged.setdefault(key, Counts()).add(counts)
        return merged

    def flush(self) -> int:
        """Add every pending delta to the database in one transaction; return the rows written. On failure
        the deltas are put back (merged with what arrived meanwhile) and the error is raised."""
        with self._writing:
            with self._lock:
                batch, self._pending = self._pending, {}
                self._flushing = batch
            if not batch:
                return 0
            try:
                with self.db.session() as s:
                    written = self._write(s, batch)
            except BaseException:
                self._restore(batch)
                raise
            with self._lock:
                self._flushing = {}
            return written

    def _restore(self, batch: Mapping[Key, Counts]) -> None:
        with self._lock:
            self._flushing = {}
            for key, counts in batch.items():
                self._pending.setdefault(key, Counts()).add(counts)

    def _write(self, s: Session, batch: Mapping[Key, Counts]) -> int:
        ids = {account_id for account_id, _, _ in batch}
        live = set(s.scalars(select(Account.id).where(Account.id.in_(ids))))
        if gone := ids - live:
            log.info("dropping usage of deleted accounts %s", sorted(gone))
        now = utcnow()
        # Sorted: two servers upserting overlapping rows lock them in the same order, so never deadlock.
        rows = [_row(key, batch[key], now) for key in sorted(batch) if key[0] in live]
        if rows:
            s.execute(_upsert(self.db.engine.dialect.name), rows)
        return len(rows)

    # --- reading (``list`` last: in the class body its name hides the builtin from later annotations) --
    def list(
        self,
        who: Principal,
        since: date | None = None,
        until: date | None = None,
        model: str | None = None,
        account: str | None = None,
    ) -> list[UsageRow]:
        """Rows ordered by day, account name and model; this process's pending counts are written first."""
        if not who.is_admin and account not in (None, who.account_name):
            return []  # another account's usage reads as none, whether or not that account exists
        self.flush()
        query = (
            select(Account.name, UsageDay)
            .join(Account, Account.id == UsageDay.account_id)
            .order_by(UsageDay.day, Account.name, UsageDay.model)
        )
        if not who.is_admin:
            query = query.where(UsageDay.account_id == who.account_id)
        elif account is not None:
            query = query.where(Account.name == account)
        if since is not None:
            query = query.where(UsageDay.day >= since)
        if until is not None:
            query = query.where(UsageDay.day <= until)
        if model is not None:
            query = query.where(UsageDay.model == model)
        with self.db.read() as s:
            return [
                UsageRow(name, u.model, u.day, u.requests, u.prompt_tokens, u.completion_tokens)
                for name, u in s.execute(query)
            ]


def _row(key: Key, counts: Counts, now: datetime) -> dict[str, Any]:
    account_id, model, day = key
    return {
        "account_id": account_id,
        "model": model,
        "day": day,
        "requests": counts.requests,
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "updated_at": now,
    }


def _upsert(dialect: str) -> postgresql.Insert | sqlite.Insert:
    """``INSERT ... ON CONFLICT (account_id, model, day) DO UPDATE`` adding the new counts to the row's."""
    stmt = postgresql.insert(UsageDay) if dialect == "postgresql" else sqlite.insert(UsageDay)
    added = {
        "requests": UsageDay.requests + stmt.excluded.requests,
        "prompt_tokens": UsageDay.prompt_tokens + stmt.excluded.prompt_tokens,
        "completion_tokens": UsageDay.completion_tokens + stmt.excluded.completion_tokens,
        "updated_at": stmt.excluded.updated_at,
    }
    return stmt.on_conflict_do_update(index_elements=[UsageDay.account_id, UsageDay.model, UsageDay.day], set_=added)
