"""A/B and shadow experiments on an endpoint (a route): the service that reads and changes them.

- An **A/B experiment** (``abx_…``) divides its control deployment's share of the route's live traffic
  between its members by their percents (``traffic.shares`` applies it to each request). Members are
  2-20 live deployments of the route, each in no other A/B experiment; percents are integers summing to
  100; exactly one member is the control, with at least 1 percent and a positive weight in the traffic
  split (a control without weight has no share to divide: the experiment would silently do nothing).
- A **shadow experiment** (``exp_…``) copies a sample of the route's requests to its targets, whose
  answers are timed and dropped (``routing.py``). A target takes no live traffic: it has weight 0 and is
  in no A/B experiment, and it is marked ``TRAFFIC_MODE_SHADOW`` while a target names it, so the traffic
  split cannot give it live traffic meanwhile. An experiment is ACTIVE while it has targets.

The rules themselves are pure checks in ``experiment_rules.py``. Both kinds are ``Experiment`` rows;
every write checks the etag it was given (a stale one is 409), gives the row a new one, and records an
event on the route once committed (events are written in a transaction of their own, which would wait
behind ours on SQLite).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.accounts.service import Principal
from modelport.endpoints.events import Events
from modelport.endpoints.experiment_rules import (
    AB,
    SHADOW_INACTIVE,
    SHADOW_KIND,
    Member,
    TargetSpec,
    check_target,
    checked_members,
    checked_name,
    checked_source,
    checked_target_name,
)
from modelport.endpoints.routes import LIVE, SHADOW, Routes
from modelport.endpoints.routing import SHADOW_ACTIVE
from modelport.endpoints.service import check_etag, new_etag
from modelport.endpoints.traffic import CONTROL, shares
from modelport.errors import Conflict, NotFound
from modelport.ids import new_wire_id
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Experiment, Route, utcnow

_WHAT = {AB: "A/B experiment", SHADOW_KIND: "shadow experiment"}
_PREFIX = {AB: "abx", SHADOW_KIND: "exp"}


class Experiments:
    def __init__(self, db: Database, routes: Routes, events: Events) -> None:
        self.db, self.routes, self.events = db, routes, events
        self._lock = threading.Lock()  # every change is read-check-write over a route's experiments

    # --- both kinds -----------------------------------------------------------------------------
    def list(self, route: Route, kind: str) -> list[Experiment]:
        with self.db.read() as s:
            query = select(Experiment).where(Experiment.route_id == route.id, Experiment.kind == kind)
            return list(s.scalars(query.order_by(Experiment.created_at, Experiment.id)))

    def get(self, route: Route, kind: str, ref: str) -> Experiment:
        """An experiment of ``route`` by its id or its name."""
        for x in self.list(route, kind):
            if ref in (x.id, x.name):
                return x
        raise NotFound(f"{_WHAT[kind]} {ref!r} not found in endpoint {route.name}", param="experimentId")

    def delete(self, route: Route, kind: str, ref: str, etag: str | None) -> None:
        x = self.get(route, kind, ref)
        with self._lock, self.db.session() as s:
            row = s.get(Experiment, x.id)
            if row is None:
                return
            check_etag(etag, row.etag, f"{_WHAT[kind]} {row.name}")
            s.delete(row)
            s.flush()
            _release(s, route.id, [t["target_deployment_id"] for t in row.targets])
        self.events.record(route.id, "experiment.deleted", f"{_WHAT[kind]} {x.name} deleted")

    def forget_deployment(self, route: Route, deployment_id: str) -> None:
        """A deployment is being deleted: out of every experiment, as ``tg endpoints rm dep_…`` does it
        client-side (``rm ep --force`` does not, and must still succeed). An A/B experiment that loses its
        control, or would keep fewer than two members, goes; otherwise the control takes back the share.
        A shadow experiment loses the target (and is INACTIVE without targets)."""
        changed: list[str] = []
        with self._lock, self.db.session() as s:
            for x in list(s.scalars(select(Experiment).where(Experiment.route_id == route.id))):
                if x.kind == AB and any(m["deployment_id"] == deployment_id for m in x.members):
                    changed.append(f"{_WHAT[AB]} {x.name}: " + _drop_member(s, x, deployment_id))
                elif x.kind == SHADOW_KIND and any(t["target_deployment_id"] == deployment_id for t in x.targets):
                    x.targets = [t for t in x.targets if t["target_deployment_id"] != deployment_id]
                    x.state = SHADOW_ACTIVE if x.targets else SHADOW_INACTIVE
                    x.etag, x.updated_at = new_etag(), utcnow()
                    changed.append(f"{_WHAT[SHADOW_KIND]} {x.name}: target removed")
        for message in changed:
            self.events.record(route.id, "experiment.updated", f"{message} (its deployment was deleted)")

    def _create(
        self, who: Principal, route: Route, kind: str, name: str, fill: Callable[[Session, Experiment], None]
    ) -> Experiment:
        name = checked_name(name, _WHAT[kind])
        now = utcnow()
        x = Experiment(
            id=new_wire_id(_PREFIX[kind]),
            route_id=route.id,
            kind=kind,
            name=name,
            created_by=who.account_name,
            etag=new_etag(),
            created_at=now,
            updated_at=now,
        )
        with self._lock, self.db.session() as s:
            taken = select(Experiment.id).where(
                Experiment.route_id == route.id, Experiment.kind == kind, Experiment.name == name
            )
            if s.scalars(taken).first() is not None:
                raise Conflict(f"{_WHAT[kind]} {name} already exists in endpoint {route.name}", param="name")
            fill(s, x)
            s.add(x)
        self.events.record(
            route.id,
            "experiment.created",
            f"{_WHAT[kind]} {name} created: {_describe(x, self.routes.labels(route.id))}",
        )
        return self.get(route, kind, x.id)

    def _change(
        self, route: Route, kind: str, ref: str, etag: str | None, apply: Callable[[Session, Experiment], None]
    ) -> Experiment:
        """Apply one change to the experiment under the lock, if ``etag`` is still current."""
        x_id = self.get(route, kind, ref).id
        with self._lock, self.db.session() as s:
            x = s.get(Experiment, x_id)
            if x is None:
                raise NotFound(f"{_WHAT[kind]} {ref!r} not found in endpoint {route.name}", param="experimentId")
            check_etag(etag, x.etag, f"{_WHAT[kind]} {x.name}")
            apply(s, x)
            x.etag, x.updated_at = new_etag(), utcnow()
        return self.get(route, kind, x_id)

    # --- A/B ------------------------------------------------------------------------------------
    def create_ab(
        self, who: Principal, route: Route, name: str, members: Sequence[Member], description: str = ""
    ) -> Experiment:
        resolved = self._resolve(who, route, [m.deployment for m in members])

        def fill(s: Session, x: Experiment) -> None:
            x.members, x.description = _members(s, route.id, members, resolved, None), description or ""

        return self._create(who, route, AB, name, fill)

    def update_ab(
        self,
        who: Principal,
        route: Route,
        ref: str,
        etag: str | None,
        *,
        members: Sequence[Member] | None = None,
        description: str | None = None,
    ) -> Experiment:
        resolved = self._resolve(who, route, [m.deployment for m in members or []])

        def apply(s: Session, x: Experiment) -> None:
            if members is not None:
                x.members = _members(s, route.id, members, resolved, x.id)
            if description is not None:
                x.description = description

        x = self._change(route, AB, ref, etag, apply)
        self._updated(route, x)
        return x

    def _updated(self, route: Route, x: Experiment) -> None:
        message = f"{_WHAT[x.kind]} {x.name} updated: {_describe(x, self.routes.labels(route.id))}"
        self.events.record(route.id, "experiment.updated", message)

    def _resolve(self, who: Principal, route: Route, refs: Iterable[str]) -> dict[str, Endpoint | str]:
        """Each reference's deployment, or why there is none (reported with the other problems)."""
        found: dict[str, Endpoint | str] = {}
        for ref in refs:
            try:
                found[ref] = self.routes.deployment(who, route, ref)
            except NotFound as e:
                found[ref] = e.message
        return found

    # --- shadow ---------------------------------------------------------------------------------
    def create_shadow(
        self,
        who: Principal,
        route: Route,
        name: str,
        source: Mapping[str, Any],
        targets: Sequence[TargetSpec] = (),
        description: str = "",
    ) -> Experiment:
        checked = checked_source(source)
        resolved = self._resolve(who, route, [t.deployment for t in targets])

        def fill(s: Session, x: Experiment) -> None:
            x.source, x.description, x.targets = checked, description or "", []
            for spec in targets:
                _add_target(s, route.id, x, spec, resolved[spec.deployment])
            x.state = SHADOW_ACTIVE if x.targets else SHADOW_INACTIVE

        return self._create(who, route, SHADOW_KIND, name, fill)

    def update_shadow(
        self,
        route: Route,
        ref: str,
        etag: str | None,
        *,
        source: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> Experiment:
        checked = checked_source(source) if source is not None else None

        def apply(_: Session, x: Experiment) -> None:
            if checked is not None:
                x.source = checked
            if description is not None:
                x.description = description

        x = self._change(route, SHADOW_KIND, ref, etag, apply)
        self._updated(route, x)
        return x

    # --- shadow targets -------------------------------------------------------------------------
    def target(self, route: Route, ref: str, target_ref: str) -> tuple[Experiment, dict[str, Any]]:
        x = self.get(route, SHADOW_KIND, ref)
        return x, _find_target(x, target_ref)

    def add_target(self, who: Principal, route: Route, ref: str, spec: TargetSpec) -> tuple[Experiment, dict[str, Any]]:
        resolved = self._resolve(who, route, [spec.deployment])
        added: dict[str, Any] = {}

        def apply(s: Session, x: Experiment) -> None:
            added.update(_add_target(s, route.id, x, spec, resolved[spec.deployment]))
            x.state = SHADOW_ACTIVE

        x = self._change(route, SHADOW_KIND, ref, None, apply)
        self.events.record(
            route.id,
            "experiment.target_added",
            f"shadow experiment {x.name}: target {spec.name} added",
            deployment_id=added["target_deployment_id"],
        )
        return x, _find_target(x, added["id"])

    def update_target(
        self, route: Route, ref: str, target_ref: str, etag: str | None, *, name: str | None, description: str | None
    ) -> tuple[Experiment, dict[str, Any]]:
        """A target's name or description (its deployment is what it is: add another target instead)."""

        def apply(_: Session, x: Experiment) -> None:
            old = _find_target(x, target_ref)
            check_etag(etag, old["etag"], f"target {old['name']}")
            new = dict(old, etag=new_etag())
            if name is not None and name != old["name"]:
                new["name"] = checked_target_name(name, x.name, x.targets)
            if description is not None:
                new["description"] = description
            x.targets = [new if t["id"] == old["id"] else t for t in x.targets]  # a new list: JSON columns

        x = self._change(route, SHADOW_KIND, ref, None, apply)
        target = _find_target(x, name if name is not None else target_ref)
        self.events.record(
            route.id, "experiment.target_updated", f"shadow experiment {x.name}: target {target['name']} updated"
        )
        return x, target

    def delete_target(self, route: Route, ref: str, target_ref: str, etag: str | None) -> None:
        removed: dict[str, Any] = {}

        def apply(s: Session, x: Experiment) -> None:
            removed.update(_find_target(x, target_ref))
            check_etag(etag, removed["etag"], f"target {removed['name']}")
            x.targets = [t for t in x.targets if t["id"] != removed["id"]]
            x.state = SHADOW_ACTIVE if x.targets else SHADOW_INACTIVE
            s.flush()
            _release(s, route.id, [removed["target_deployment_id"]])

        x = self._change(route, SHADOW_KIND, ref, None, apply)
        self.events.record(
            route.id,
            "experiment.target_removed",
            f"shadow experiment {x.name}: target {removed['name']} removed",
            deployment_id=removed["target_deployment_id"],
        )

    # --- what the shadow's targets measured -----------------------------------------------------
    def live_sources(self, route: Route) -> Sequence[str]:
        """The deployments that answer the route's live requests now: those a shadow copies from."""
        live = {d.id for d in self.routes.deployments(route.id) if d.traffic_mode == LIVE}
        return list(shares(route.traffic, live, self.list(route, AB)))


# --- what the checks need, read in the writing transaction ----------------------------------------
def _members(
    s: Session, route_id: str, members: Sequence[Member], resolved: Mapping[str, Endpoint | str], own_id: str | None
) -> list[dict[str, Any]]:
    return checked_members(members, resolved, _weights(s, route_id), _ab_members(s, route_id, own_id))


def _weights(s: Session, route_id: str) -> dict[str, float]:
    route = s.get(Route, route_id)
    return {t["deployment_id"]: float(t["weight"]) for t in (route.traffic if route else [])}


def _ab_members(s: Session, route_id: str, own_id: str | None) -> dict[str, str]:
    """Deployments in the route's A/B experiments (but ``own_id``), with that experiment's name."""
    query = select(Experiment).where(Experiment.route_id == route_id, Experiment.kind == AB)
    return {m["deployment_id"]: x.name for x in s.scalars(query) if x.id != own_id for m in x.members}


def _add_target(s: Session, route_id: str, x: Experiment, spec: TargetSpec, found: Endpoint | str) -> dict[str, Any]:
    """Check one new target, add it to ``x``, and mark its deployment SHADOW."""
    name = checked_target_name(spec.name, x.name, x.targets)
    weight = _weights(s, route_id).get(found.id, 0.0) if isinstance(found, Endpoint) else 0.0
    in_ab = _ab_members(s, route_id, None).get(found.id) if isinstance(found, Endpoint) else None
    deployment = check_target(found, weight, in_ab, x.name, x.targets)
    target = {
        "id": new_wire_id("tgt"),
        "name": name,
        "target_deployment_id": deployment.id,
        "etag": new_etag(),
        "description": spec.description or "",
    }
    x.targets = [*x.targets, target]  # a new list: JSON columns see assignment, not mutation
    _set_mode(s, deployment.id, SHADOW)
    return target


def _drop_member(s: Session, x: Experiment, deployment_id: str) -> str:
    left = [m for m in x.members if m["deployment_id"] != deployment_id]
    gone = next(m for m in x.members if m["deployment_id"] == deployment_id)
    control = next((m for m in left if m.get("role") == CONTROL), None)
    if control is None or len(left) < 2:
        s.delete(x)
        return "deleted"
    x.members = [m | {"percent": m["percent"] + gone["percent"]} if m is control else m for m in left]
    x.etag, x.updated_at = new_etag(), utcnow()
    return f"member removed, its {gone['percent']}% back to the control"


def _find_target(x: Experiment, ref: str) -> dict[str, Any]:
    for t in x.targets:
        if ref in (t["id"], t["name"]):
            return t
    raise NotFound(f"target {ref!r} not found in shadow experiment {x.name}", param="targetId")


def _release(s: Session, route_id: str, deployment_ids: Iterable[str]) -> None:
    """Deployments no shadow target names any more go back to live mode (at weight 0 until given some)."""
    query = select(Experiment).where(Experiment.route_id == route_id, Experiment.kind == SHADOW_KIND)
    still = {t["target_deployment_id"] for x in s.scalars(query) for t in x.targets}
    for deployment_id in set(deployment_ids) - still:
        _set_mode(s, deployment_id, LIVE)


def _set_mode(s: Session, deployment_id: str, mode: str) -> None:
    deployment = s.get(Endpoint, deployment_id)
    if deployment is not None and deployment.traffic_mode != mode:
        deployment.traffic_mode, deployment.etag, deployment.updated_at = mode, new_etag(), utcnow()


def _describe(x: Experiment, labels: dict[str, str]) -> str:
    if x.kind == AB:
        return ", ".join(f"{labels.get(m['deployment_id'], m['deployment_id'])} {m['percent']}%" for m in x.members)
    sampling = x.source.get("endpoint", {}).get("sampling", {})
    how = ", ".join(f"{kind} " + " ".join(f"{k}={v}" for k, v in args.items()) for kind, args in sampling.items())
    targets = ", ".join(labels.get(t["target_deployment_id"], t["target_deployment_id"]) for t in x.targets)
    return f"sampling {how or 'none'}; targets: {targets or 'none'}"
