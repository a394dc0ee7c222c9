"""Endpoints with several deployments (Together's v2): a route's name, its deployments and its traffic split.

A **route** (``Route``, wire ``ep_…``) is the stable name clients send as ``model``. Each **deployment**
under it is an ``Endpoint`` row (wire ``dep_…``): replicas of one pinned model revision on one hardware
configuration, with its autoscaling, started and supervised exactly like a v1 endpoint (``service.py``,
``supervisor.py``). The route's ``traffic`` weights say how live requests split between deployments
(``traffic.py``); rollouts and experiments change it through ``set_traffic``.

Every write changes the row's ``etag``; a write that names an etag which is no longer current is refused
with 409 (``Conflict``), so two clients never overwrite each other unseen.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.accounts.service import Principal
from modelport.endpoints.events import Events
from modelport.endpoints.service import EndpointService, EndpointSpec, check_etag, new_etag
from modelport.endpoints.states import RUNNING_STATES
from modelport.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from modelport.ids import deployment_id_of_wire, new_wire_id
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Experiment, Rollout, Route, utcnow

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LIVE, SHADOW = "TRAFFIC_MODE_LIVE", "TRAFFIC_MODE_SHADOW"
ACTIVE_ROLLOUT_STATES = (
    "ROLLOUT_STATE_PENDING",
    "ROLLOUT_STATE_RUNNING",
    "ROLLOUT_STATE_PAUSING",
    "ROLLOUT_STATE_PAUSED",
    "ROLLOUT_STATE_SYSTEM_PAUSED",
    "ROLLOUT_STATE_STABILIZING",
    "ROLLOUT_STATE_CANCELLING",
)


def check_name(name: str, what: str) -> str:
    bare = name.rpartition("/")[2]
    if not NAME.match(bare):
        raise InvalidRequest(
            f"{what} name {name!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param="name",
        )
    return bare


class Routes:
    def __init__(
        self, db: Database, endpoints: EndpointService, events: Events, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.db, self.endpoints, self.events, self.on_change = db, endpoints, events, on_change
        self._lock = threading.Lock()  # traffic changes are read-modify-write

    # --- routes (v2 endpoints) ------------------------------------------------------------------
    def create(self, who: Principal, name: str, visibility: str | None = None) -> Route:
        bare = check_name(name, "endpoint")
        full = f"{who.account_name}/{bare}"
        now = utcnow()
        with self.db.session() as s:
            if s.scalars(select(Route.id).where(Route.name == full)).first() is not None:
                raise Conflict(f"endpoint {full} already exists", param="name")
            cap = self.endpoints.settings.quota_endpoints
            if len(list(s.scalars(select(Route.id).where(Route.account_id == who.account_id)))) >= cap:
                raise QuotaExceeded(
                    f"this account has {cap} endpoints, its limit (MODELPORT_QUOTA_ENDPOINTS): delete one first",
                    param="name",
                )
            route = Route(
                id=new_wire_id("ep"),
                account_id=who.account_id,
                name=full,
                visibility=visibility or "VISIBILITY_PRIVATE",
                traffic=[],
                etag=new_etag(),
                created_at=now,
                updated_at=now,
            )
            s.add(route)
        self.events.record(route.id, "endpoint.created", f"endpoint {full} created")
        return self.get(who, route.id)

    def listed(self, who: Principal, name: str | None = None) -> list[Route]:
        query = select(Route).where(Route.account_id == who.account_id)
        if name:
            query = query.where((Route.name == name) | (Route.name == f"{who.account_name}/{name}"))
        with self.db.read() as s:
            return list(s.scalars(query.order_by(Route.created_at)))

    def get(self, who: Principal, ref: str) -> Route:
        names = (ref, f"{who.account_name}/{ref}")
        with self.db.read() as s:
            route = s.scalars(
                select(Route).where(Route.account_id == who.account_id, (Route.id == ref) | Route.name.in_(names))
            ).first()
        if route is None:
            raise NotFound(f"endpoint {ref!r} not found", param="endpointId")
        return route

    def find(self, who: Principal, name: str) -> tuple[Route, list[Endpoint], list[Experiment]] | None:
        """The route a request's ``model`` names (its full name or id), in the caller's account, with its
        deployments and experiments: what routing one request needs, read in one transaction."""
        with self.db.read() as s:
            route = s.scalars(
                select(Route).where(Route.account_id == who.account_id, (Route.name == name) | (Route.id == name))
            ).first()
            if route is None:
                return None
            deployments = list(s.scalars(select(Endpoint).where(Endpoint.route_id == route.id)))
            experiments = list(s.scalars(select(Experiment).where(Experiment.route_id == route.id)))
        return route, deployments, experiments

    def update(self, who: Principal, ref: str, etag: str | None, changes: dict[str, Any]) -> Route:
        route_id = self.get(who, ref).id
        with self._lock, self.db.session() as s:
            route = s.get(Route, route_id)
            assert route is not None
            check_etag(etag, route.etag, f"endpoint {route.name}")
            if changes.get("name"):
                full = f"{who.account_name}/{check_name(str(changes['name']), 'endpoint')}"
                if full != route.name and s.scalars(select(Route.id).where(Route.name == full)).first():
                    raise Conflict(f"endpoint {full} already exists", param="name")
                _rename_deployments(s, route, full)
                route.name = full
            if changes.get("visibility"):
                route.visibility = str(changes["visibility"])
            if "traffic" in changes:
                deployments = list(s.scalars(select(Endpoint).where(Endpoint.route_id == route.id)))
                route.traffic = _checked_split(changes["traffic"], deployments)
            route.etag, route.updated_at = new_etag(), utcnow()
        if "traffic" in changes:
            split = _describe(changes["traffic"], self.labels(route_id))
            self.events.record(route_id, "endpoint.traffic_changed", f"traffic split: {split}")
        return self.get(who, route_id)

    def delete(self, who: Principal, ref: str, etag: str | None) -> None:
        route = self.get(who, ref)
        with self._lock, self.db.session() as s:
            row = s.get(Route, route.id)
            if row is None:
                return
            check_etag(etag, row.etag, f"endpoint {route.name}")  # in the transaction that deletes
            left = list(s.scalars(select(Endpoint.label).where(Endpoint.route_id == route.id)))
            if left:
                raise Conflict(
                    f"endpoint {route.name} still has deployments ({', '.join(left)}): scale them to 0 and delete "
                    "them first (tg endpoints rm --force does both)",
                    param="endpointId",
                )
            s.delete(row)

    def set_traffic(
        self, route_id: str, weights: dict[str, float] | Callable[[dict[str, float]], dict[str, float]], why: str
    ) -> None:
        """Rollouts and experiments move traffic here: ``weights`` replaces the named deployments' weights.
        Given a function, it is called with the split as it is, under the lock, and returns those weights:
        a change computed from the split cannot overwrite one made meanwhile."""
        with self._lock, self.db.session() as s:
            route = s.get(Route, route_id)
            if route is None:
                return
            split = {t["deployment_id"]: float(t["weight"]) for t in route.traffic}
            split.update(weights(dict(split)) if callable(weights) else weights)
            route.traffic = [{"deployment_id": d, "weight": w} for d, w in split.items()]
            route.etag, route.updated_at = new_etag(), utcnow()
        described = _describe(route.traffic, self.labels(route_id))
        self.events.record(route_id, "endpoint.traffic_changed", f"{why}: {described}")

    def _join(self, route_id: str, deployment: Endpoint) -> None:
        """A new deployment enters the split: the first live one with all the traffic, later ones at 0.

        The endpoint's etag stays: a client that read the endpoint, then added a deployment, then sets
        its weight (``tg endpoints deploy --traffic-weight``) is not racing anyone."""
        with self._lock, self.db.session() as s:
            route = s.get(Route, route_id)
            if route is None:
                return
            first = deployment.traffic_mode == LIVE and not any(float(t["weight"]) > 0 for t in route.traffic)
            route.traffic = [*route.traffic, {"deployment_id": deployment.id, "weight": 1.0 if first else 0.0}]

    def labels(self, route_id: str) -> dict[str, str]:
        """Deployment id -> name, for messages people read."""
        return {d.id: d.label for d in self.deployments(route_id)}

    def experiments(self, route_id: str) -> list[Experiment]:
        with self.db.read() as s:
            return list(s.scalars(select(Experiment).where(Experiment.route_id == route_id)))

    def active_rollout(self, route_id: str) -> str | None:
        """The route's one rollout that has not ended, if any."""
        with self.db.read() as s:
            return active_rollout_in(s, route_id)

    # --- deployments ----------------------------------------------------------------------------
    def deployments(self, route_id: str) -> list[Endpoint]:
        with self.db.read() as s:
            query = select(Endpoint).where(Endpoint.route_id == route_id).order_by(Endpoint.created_at)
            return list(s.scalars(query))

    def deployment(self, who: Principal, route: Route, ref: str) -> Endpoint:
        """A deployment of ``route`` by its ``dep_`` id, our id, its name, or its full name."""
        ids = {ref, deployment_id_of_wire(ref)}
        for d in self.deployments(route.id):
            if d.account_id == who.account_id and (d.id in ids or ref in (d.label, d.name)):
                return d
        raise NotFound(f"deployment {ref!r} not found in endpoint {route.name}", param="deploymentId")

    def create_deployment(
        self, who: Principal, route: Route, spec: EndpointSpec, validate_only: bool = False
    ) -> Endpoint | None:
        """A new deployment of ``route``; None with ``validate_only`` (every check run, nothing created)."""
        label = check_name(spec.label or "", "deployment")
        present = self.deployments(route.id)
        if any(d.label == label for d in present):
            raise Conflict(f"deployment {label} already exists in endpoint {route.name}", param="name")
        cap = self.endpoints.settings.quota_deployments_per_endpoint
        if len(present) >= cap:
            raise QuotaExceeded(
                f"endpoint {route.name} has {cap} deployments, its limit (MODELPORT_QUOTA_DEPLOYMENTS_PER_ENDPOINT): "
                "delete one first",
                param="name",
            )
        spec = replace(spec, route_id=route.id, label=label)
        if validate_only:
            self.endpoints.validate(who, spec)
            return None
        deployment = self.endpoints.create(who, spec)
        self._join(route.id, deployment)
        served = self.endpoints.catalog.model_at(deployment.model_id, deployment.revision_id)
        what = f"{served.name} ({deployment.revision_id})" if served is not None else deployment.model_id
        self.events.record(
            route.id,
            "deployment.created",
            f"deployment {label} created: {what} on {deployment.hardware}, "
            f"{spec.min_replicas}-{spec.max_replicas} replicas",
            deployment_id=deployment.id,
        )
        return deployment

    def update_deployment(
        self, who: Principal, route: Route, ref: str, etag: str | None, changes: dict[str, Any]
    ) -> Endpoint:
        deployment = self.deployment(who, route, ref)
        if "label" in changes:
            check_name(changes["label"], "deployment")
        # The etag is checked again in the transaction that writes (``EndpointService.update``).
        updated = self.endpoints.update(who, deployment.id, changes | {"start_if_scaled": True, "etag": etag})
        summary = ", ".join(f"{k}={v}" for k, v in changes.items())
        self.events.record(route.id, "deployment.updated", summary, deployment_id=deployment.id)
        return updated

    def delete_deployment(self, who: Principal, route: Route, ref: str, etag: str | None) -> None:
        deployment = self.deployment(who, route, ref)
        check_etag(etag, deployment.etag, f"deployment {deployment.label}")
        if deployment.state in RUNNING_STATES:  # STOPPING is fine: its replicas finish, then end
            raise Conflict(
                f"deployment {deployment.label} is {deployment.state}: scale it to 0/0 replicas first",
                param="deploymentId",
            )
        self.endpoints.delete(who, deployment.id, etag)  # out of its experiments and rollouts first
        self.events.record(route.id, "deployment.deleted", f"deployment {deployment.label} deleted")


def active_rollout_in(s: Session, route_id: str) -> str | None:
    """The newest rollout of the route that has not ended (what ``tg endpoints rollout --pause`` acts on),
    read in the caller's transaction."""
    query = select(Rollout.id).where(Rollout.route_id == route_id, Rollout.state.in_(ACTIVE_ROLLOUT_STATES))
    return s.scalars(query.order_by(Rollout.created_at.desc())).first()


def _rename_deployments(s: Any, route: Route, full: str) -> None:
    """A deployment's name is its endpoint's and its own (``acme/chat/blue``; a v1 endpoint's one
    deployment is named like its endpoint): they follow the endpoint's new name."""
    for d in s.scalars(select(Endpoint).where(Endpoint.route_id == route.id)):
        renamed = full if d.name == route.name else f"{full}/{d.label}"
        if s.scalars(select(Endpoint.id).where(Endpoint.name == renamed, Endpoint.id != d.id)).first():
            raise Conflict(f"a deployment named {renamed} already exists", param="name")
        d.name = renamed


def _checked_split(split: Sequence[dict[str, Any]], deployments: list[Endpoint]) -> list[dict[str, Any]]:
    by_id = {d.id: d for d in deployments}
    out: list[dict[str, Any]] = []
    for item in split:
        dep_id = deployment_id_of_wire(str(item.get("deployment_id", ""))) or str(item.get("deployment_id", ""))
        try:
            weight = float(item.get("weight") or 0.0)
        except (TypeError, ValueError):
            weight = math.nan
        if not math.isfinite(weight):
            raise InvalidRequest("trafficSplit weights must be finite numbers", param="trafficSplit")
        if dep_id not in by_id:
            raise InvalidRequest(f"trafficSplit names {item.get('deployment_id')!r}, not a deployment here")
        if weight < 0:
            raise InvalidRequest("trafficSplit weights must be >= 0", param="trafficSplit")
        if weight > 0 and by_id[dep_id].traffic_mode == SHADOW:
            raise InvalidRequest(f"deployment {by_id[dep_id].label} is a shadow deployment: it takes no live traffic")
        out.append({"deployment_id": dep_id, "weight": weight})
    if len({t["deployment_id"] for t in out}) != len(out):
        raise InvalidRequest("trafficSplit names a deployment twice", param="trafficSplit")
    return out


def _describe(split: Sequence[dict[str, Any]], labels: dict[str, str]) -> str:
    parts = [f"{labels.get(t['deployment_id'], t['deployment_id'])}={float(t['weight']):g}" for t in split]
    return ", ".join(parts) or "empty"
