"""A lease in the database: which one of several servers on one database does a duty.

Every ``modelport serve`` routes requests, but only one at a time may supervise endpoints (launch,
restart, scale and stop replicas) and drive rollouts, or two would each start every replica. That one
holds the ``controller`` lease: a row naming it, renewed every third of ``MODELPORT_CONTROLLER_LEASE_S``;
when its holder stops renewing (it crashed, or lost the database), another server takes it once it has
expired. Taking and renewing is one conditional ``UPDATE`` (holder is me, or the lease has expired),
atomic on SQLite and PostgreSQL alike, so two servers never both succeed.

A holder that cannot renew stops acting as the holder after half the lease, before anyone else may take
it: clocks of the servers are trusted to within that margin.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Lease as LeaseRow
from modelport.storage.db.tables import utcnow

log = logging.getLogger(__name__)


def holder_name() -> str:
    """This process, for the lease row and the logs: host, pid and a nonce (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _gone(holder: str) -> bool:
    """Whether ``holder`` names a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Lease:
    def __init__(self, db: Database, name: str, ttl_s: float, holder: str | None = None) -> None:
        self.db, self.name, self.ttl_s = db, name, ttl_s
        self.holder = holder or holder_name()
        self._renewed = 0.0  # monotonic time of the last successful take or renewal; 0: not held
        self._held = False

    @property
    def holding(self) -> bool:
        """What the last ``held`` found, without asking the database (for other threads)."""
        return self._held

    def held(self) -> bool:
        """Whether this server holds the lease now; takes or renews it when due (a database write at
        most every third of the lease)."""
        now = time.monotonic()
        if self._held and now - self._renewed < self.ttl_s / 3:
            return True
        try:
            took = self._take()
        except SQLAlchemyError as e:
            log.warning("could not renew the %s lease: %s", self.name, type(e).__name__)
            # Keep acting only while nobody else can have taken it yet.
            self._held = self._held and now - self._renewed < self.ttl_s / 2
            return self._held
        if took != self._held:
            log.info("%s the %s lease (%s)", "took" if took else "lost", self.name, self.holder)
        self._held = took
        if took:
            self._renewed = now
        return took

    def _take(self) -> bool:
        now = utcnow()
        expires = now + timedelta(seconds=self.ttl_s)
        with self.db.session() as s:
            taken = s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name, or_(LeaseRow.holder == self.holder, LeaseRow.expires_at < now))
                .values(holder=self.holder, expires_at=expires)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return True
            row = s.get(LeaseRow, self.name)
            if row is not None:
                if not _gone(row.holder):
                    return False  # another server holds it
                # Its holder was a process of this host that has ended (a server killed and started
                # again): no need to wait for the lease to run out.
                log.info("the %s lease's holder %s has ended: taking it over", self.name, row.holder)
                row.holder, row.expires_at = self.holder, expires
                return True
        try:  # the first server ever: the row does not exist yet
            with self.db.session() as s:
                s.add(LeaseRow(name=self.name, holder=self.holder, expires_at=expires))
        except IntegrityError:
            return False  # another server created it first
        return True

    def release(self) -> None:
        """On shutdown: let another server take over now, not after the lease runs out."""
        if not self._held:
            return
        self._held = False
        try:
            with self.db.session() as s:
                s.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )
        except SQLAlchemyError:
            pass  # it expires on its own
