"""What happened to an endpoint (a route) and its deployments, as ``tg endpoints events`` lists it.

Every party that changes a route writes here: the API (created, traffic changed), the supervisor
(replicas up, crashed, scaled), the rollout controller (steps, gate verdicts) and the shadow mirror
(comparisons). Events go with their route when it is deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete, select

from modelport.ids import new_wire_id
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import EndpointEvent, utcnow

log = logging.getLogger(__name__)


class Level(StrEnum):
    DEBUG = "LEVEL_DEBUG"
    INFO = "LEVEL_INFO"
    WARN = "LEVEL_WARN"
    ERROR = "LEVEL_ERROR"


_ORDER = list(Level)
MAX_LISTED = 1000
# Events kept per endpoint: a busy one (shadow comparisons, scaling) must not grow its table forever.
# Checked every PRUNE_EVERY writes to it.
MAX_KEPT, PRUNE_EVERY = 5000, 200


class Events:
    def __init__(self, db: Database, max_kept: int = MAX_KEPT) -> None:
        self.db, self.max_kept = db, max_kept
        self._writes: dict[str, int] = {}

    def record(
        self,
        route_id: str | None,
        type: str,
        message: str,
        *,
        level: Level = Level.INFO,
        deployment_id: str | None = None,
    ) -> None:
        """Write one event; never raises (an event lost is better than a request failed)."""
        if route_id is None:
            return
        try:
            with self.db.session() as s:
                s.add(
                    EndpointEvent(
                        id=new_wire_id("evt"),
                        route_id=route_id,
                        deployment_id=deployment_id,
                        type=type,
                        level=level,
                        message=message,
                        created_at=utcnow(),
                    )
                )
            self._writes[route_id] = self._writes.get(route_id, 0) + 1
            if self._writes[route_id] % PRUNE_EVERY == 1:
                self.prune(route_id)
        except Exception:
            log.exception("could not record endpoint event %s", type)

    def prune(self, route_id: str) -> None:
        """Keep the endpoint's newest ``max_kept`` events (and any as old as the oldest of those)."""
        mine = EndpointEvent.route_id == route_id
        oldest_kept = (
            select(EndpointEvent.created_at)
            .where(mine)
            .order_by(EndpointEvent.created_at.desc())
            .offset(self.max_kept - 1)
            .limit(1)
        )
        with self.db.session() as s:
            cutoff = s.scalars(oldest_kept).first()
            if cutoff is not None:
                s.execute(delete(EndpointEvent).where(mine, EndpointEvent.created_at < cutoff))

    def list(
        self,
        route_id: str,
        *,
        deployment_ids: Sequence[str] = (),
        min_level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        types: Sequence[str] = (),
    ) -> list[EndpointEvent]:
        query = select(EndpointEvent).where(EndpointEvent.route_id == route_id)
        if deployment_ids:
            query = query.where(EndpointEvent.deployment_id.in_(list(deployment_ids)))
        if since is not None:
            query = query.where(EndpointEvent.created_at >= since)
        if until is not None:
            query = query.where(EndpointEvent.created_at <= until)
        if types:
            query = query.where(EndpointEvent.type.in_(list(types)))
        if min_level in _ORDER:  # in the query, before the limit: a busy endpoint's warnings are all found
            query = query.where(EndpointEvent.level.in_(_ORDER[_ORDER.index(Level(min_level)) :]))
        newest = query.order_by(EndpointEvent.created_at.desc(), EndpointEvent.id.desc()).limit(MAX_LISTED)
        with self.db.read() as s:
            rows = list(s.scalars(newest))
        # The latest MAX_LISTED, oldest first: a busy endpoint's recent events are never cut off.
        return list(reversed(rows))
