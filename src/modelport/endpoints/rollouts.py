"""Rollouts: moving an endpoint's traffic from one deployment (the source) to another (the target), in steps.

``Rollouts`` answers the API: create (one rollout in progress per endpoint; the source defaults, as the
CLI's does, to the only other deployment with traffic), preview, list, get, delete (finished ones only),
and the user's moves: start, pause (the split holds), resume (the current step runs again), promote
(straight to 100 % and COMPLETED) and cancel (FREEZE keeps the split, REVERT gives the source its traffic
back). A move that names an etag must name the current one (409 otherwise). What happens as time passes,
and the thread that makes it happen, are ``rollout_driver.py``'s; ``tick`` runs one round of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from modelport.accounts.service import Principal
from modelport.endpoints.events import Events
from modelport.endpoints.rollout_driver import DOWN, Replicas, RolloutDriver, condition, pause_info, with_step
from modelport.endpoints.rollout_spec import Pair, finals_of, plan
from modelport.endpoints.rollout_states import RolloutState, StepState, is_terminal, move, on_request
from modelport.endpoints.routes import LIVE, Routes, active_rollout_in
from modelport.endpoints.service import check_etag, new_etag, replica_count
from modelport.endpoints.traffic import TrafficStats
from modelport.errors import Conflict, InvalidRequest, NotFound
from modelport.ids import new_wire_id
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Rollout, Route, utcnow

CANCELED = "ROLLOUT_FAILURE_CATEGORY_ABORTED_BY_OPERATOR"
FREEZE, REVERT = "CANCEL_DISPOSITION_FREEZE", "CANCEL_DISPOSITION_REVERT"
FILTERS = {"ROLLOUT_FILTER_ACTIVE": False, "ROLLOUT_FILTER_TERMINAL": True}  # filter -> terminal?
_R = RolloutState


@dataclass(frozen=True)
class Preview:
    """What a create body would do, with the defaults filled in, and what they were computed from."""

    source_id: str
    target_id: str
    source_replicas: int  # each deployment's replicas now
    target_replicas: int
    target_min_replicas: int
    target_max_replicas: int
    warnings: list[tuple[str, str]]  # (code, message): non-blocking findings
    spec: dict[str, Any]
    effective_steps: list[int]  # the default ladder, when the caller gave no steps
    seed_percent: int | None  # the target's share of the pair now, when it has one (a frozen pair)


class Rollouts:
    def __init__(self, db: Database, routes: Routes, events: Events, stats: TrafficStats, replicas: Replicas) -> None:
        self.db, self.routes = db, routes
        self.driver = RolloutDriver(db, routes, events, stats, replicas)

    def tick(self) -> None:
        """Advance every RUNNING rollout by what is due now (the controller's round; tests call it)."""
        self.driver.tick()

    # --- the API ------------------------------------------------------------------------------------
    def create(self, who: Principal, route: Route, body: Mapping[str, Any]) -> Rollout:
        source, target = self._pair(who, route, body)
        planned = plan(body, _facts(route, source, target))
        now = utcnow()
        row = Rollout(
            id=new_wire_id("rol"),
            route_id=route.id,
            source_id=source.id,
            target_id=target.id,
            strategy=planned.strategy,
            spec=planned.spec,
            state=_R.PENDING,
            current_step=0,
            traffic_percent=_percent(route.traffic, source.id, target.id),
            steps=[_step(i, p) for i, p in enumerate(planned.ladder)],
            conditions=[],
            etag=new_etag(),
            created_at=now,
            updated_at=now,
        )
        with self.driver.lock, self.db.session() as s:
            busy = active_rollout_in(s, route.id)
            if busy is not None:
                raise Conflict(
                    f"endpoint {route.name} already has rollout {busy} in progress: finish or cancel it first"
                )
            s.add(row)
        ladder = ", ".join(f"{p}%" for p in planned.ladder)
        strategy = planned.strategy.removeprefix("ROLLOUT_STRATEGY_TYPE_").lower().replace("_", "-")
        self.driver.event(row, "rollout.created", f"{strategy} from {source.label} to {target.label}: {ladder}")
        return row

    def preview(self, who: Principal, route: Route, body: Mapping[str, Any]) -> Preview:
        source, target = self._pair(who, route, body)
        facts = _facts(route, source, target)
        planned = plan(body, facts)
        floor = finals_of(planned.spec)[1] or 1
        warnings: list[tuple[str, str]] = []
        if floor > target.max_replicas:
            warnings.append(("ROLLOUT_WILL_RAISE_TARGET_MAX", f"{target.label}'s maximum rises to {floor} replicas"))
        if target.min_replicas > floor:
            message = f"{target.label} keeps its own minimum of {target.min_replicas} replicas"
            warnings.append(("FINAL_BELOW_INHERITED_MIN", message))
        busy = self.routes.active_rollout(route.id)
        if busy is not None:
            warnings.append(("START_WILL_REJECT", f"endpoint {route.name} already has rollout {busy} in progress"))
        if target.state in DOWN:
            message = f"{target.label} is {target.state}: the rollout will pause until it is started"
            warnings.append(("TARGET_NOT_READY", message))
        return Preview(
            source_id=source.id,
            target_id=target.id,
            source_replicas=facts.source_replicas,
            target_replicas=replica_count(target),
            target_min_replicas=target.min_replicas,
            target_max_replicas=target.max_replicas,
            warnings=warnings,
            spec=planned.spec,
            effective_steps=list(planned.ladder) if planned.defaulted else [],
            seed_percent=facts.target_percent or None,
        )

    def listed(self, route: Route, filter: str | None = None) -> list[Rollout]:
        if filter and filter not in FILTERS and filter != "ROLLOUT_FILTER_UNSPECIFIED":
            raise InvalidRequest(f"filter must be one of {', '.join(FILTERS)}", param="filter")
        with self.db.read() as s:
            rows = list(s.scalars(select(Rollout).where(Rollout.route_id == route.id).order_by(Rollout.created_at)))
        return [r for r in rows if filter not in FILTERS or is_terminal(r.state) == FILTERS[filter]]

    def get(self, route: Route, rollout_id: str) -> Rollout:
        with self.db.read() as s:
            row = s.get(Rollout, rollout_id)
        if row is None or row.route_id != route.id:
            raise NotFound(f"rollout {rollout_id!r} not found in endpoint {route.name}", param="rolloutId")
        return row

    def delete(self, route: Route, rollout_id: str, etag: str | None) -> None:
        with self.driver.lock:
            row = self.get(route, rollout_id)
            check_etag(etag, row.etag, f"rollout {row.id}")
            if not is_terminal(row.state):
                raise Conflict(f"rollout {row.id} is {_R(row.state).name}: cancel it first", param="rolloutId")
            with self.db.session() as s:
                s.delete(s.get(Rollout, row.id))
        self.driver.event(row, "rollout.deleted", f"rollout {row.id} deleted")

    def start(self, route: Route, rollout_id: str) -> Rollout:
        return self._request(route, rollout_id, None, "start", "rollout.started", lambda r: None)

    def pause(self, route: Route, rollout_id: str, reason: str | None, etag: str | None) -> Rollout:
        def change(r: Rollout) -> None:
            r.pause_info = pause_info(reason or "paused by request")

        return self._request(route, rollout_id, etag, "pause", "rollout.paused", change)

    def resume(self, route: Route, rollout_id: str, etag: str | None) -> Rollout:
        def change(r: Rollout) -> None:
            # The current step runs again from its start: traffic back to its percent, gates read afresh.
            r.steps = with_step(r.steps, r.current_step, StepState.PENDING, [])
            r.pause_info, r.conditions, r.step_started_at = None, [], None

        return self._request(route, rollout_id, etag, "resume", "rollout.resumed", change)

    def promote(self, route: Route, rollout_id: str, etag: str | None) -> Rollout:
        with self.driver.lock:
            row = self.get(route, rollout_id)
            check_etag(etag, row.etag, f"rollout {row.id}")
            on_request(row, "promote")
            with self.db.read() as s:
                target = s.get(Endpoint, row.target_id)
            if target is None or target.state in DOWN:
                state = "deleted" if target is None else target.state
                raise Conflict(f"the target deployment is {state}: start it before promoting", param="rolloutId")
            return self.driver.complete(row, "promoted: the target takes all the traffic now", None)

    def cancel(
        self, route: Route, rollout_id: str, reason: str | None, disposition: str | None, etag: str | None
    ) -> Rollout:
        disposition = disposition or FREEZE
        if disposition not in (FREEZE, REVERT):
            raise InvalidRequest(f"disposition must be {FREEZE} or {REVERT}", param="disposition")
        message = f"canceled ({disposition.rpartition('_')[2].lower()}): {reason or 'by request'}"

        def change(r: Rollout) -> None:
            if r.steps and r.steps[r.current_step]["state"] == StepState.RUNNING:
                r.steps = with_step(r.steps, r.current_step, StepState.FAILED, None)
            r.conditions = [*r.conditions, condition(CANCELED, message, r.current_step)]
            r.pause_info, r.step_started_at = None, None
            if disposition == REVERT:
                r.traffic_percent = 0

        def revert(r: Rollout) -> None:
            if disposition == REVERT:
                self.driver.shift(r, 0, f"rollout {r.id} canceled")

        return self._request(route, rollout_id, etag, "cancel", "rollout.canceled", change, revert, message)

    def forget_deployment(self, route: Route, deployment_id: str) -> None:
        """A deployment is being deleted: an active rollout from or to it is canceled (the split stays)."""
        for row in self.listed(route):
            if not is_terminal(row.state) and deployment_id in (row.source_id, row.target_id):
                self.cancel(route, row.id, "a deployment it moves traffic between was deleted", FREEZE, None)

    def _request(
        self,
        route: Route,
        rollout_id: str,
        etag: str | None,
        request: str,
        event: str,
        change: Callable[[Rollout], None],
        before: Callable[[Rollout], None] = lambda r: None,
        message: str | None = None,
    ) -> Rollout:
        """A user's move: checked against the etag and the table, ``before`` (traffic) then the row."""
        with self.driver.lock:
            row = self.get(route, rollout_id)
            check_etag(etag, row.etag, f"rollout {row.id}")
            to = on_request(row, request)
            before(row)

            def moved(r: Rollout) -> None:
                move(r, to, request)
                change(r)

            row = self.driver.write(row.id, moved)
        self.driver.event(row, event, message or f"rollout {row.id}: {event.partition('.')[2]}")
        self.driver.changed.set()
        return row

    def _pair(self, who: Principal, route: Route, body: Mapping[str, Any]) -> tuple[Endpoint, Endpoint]:
        ref = body.get("targetDeploymentId")
        if not ref:
            raise InvalidRequest("targetDeploymentId is required: the deployment to move traffic to")
        target = self.routes.deployment(who, route, str(ref))
        given = body.get("sourceDeploymentId")
        source = self.routes.deployment(who, route, str(given)) if given else self._default_source(route, target)
        if source.id == target.id:
            raise InvalidRequest("the source and the target are the same deployment", param="sourceDeploymentId")
        shadows = [d.label for d in (source, target) if d.traffic_mode != LIVE]
        if shadows:
            raise InvalidRequest(f"{', '.join(shadows)}: shadow deployments take no live traffic")
        return source, target

    def _default_source(self, route: Route, target: Endpoint) -> Endpoint:
        """As the CLI does: the only other deployment that has traffic now."""
        weights = {t["deployment_id"]: float(t["weight"]) for t in route.traffic}
        serving = [d for d in self.routes.deployments(route.id) if d.id != target.id and weights.get(d.id, 0) > 0]
        if len(serving) != 1:
            names = ", ".join(d.label for d in serving) or "none"
            raise InvalidRequest(
                f"give sourceDeploymentId: {len(serving)} other deployments have traffic ({names})",
                param="sourceDeploymentId",
            )
        return serving[0]


def _step(index: int, percent: int) -> dict[str, Any]:
    return {"stepIndex": index, "state": StepState.PENDING.value, "targetTrafficPercent": percent, "metrics": []}


def _facts(route: Route, source: Endpoint, target: Endpoint) -> Pair:
    return Pair(replica_count(source), target.max_replicas, _percent(route.traffic, source.id, target.id))


def _percent(traffic: Sequence[Mapping[str, Any]], source_id: str, target_id: str) -> int:
    weights = {t["deployment_id"]: float(t["weight"]) for t in traffic}
    pair = weights.get(source_id, 0.0) + weights.get(target_id, 0.0)
    return round(100 * weights.get(target_id, 0.0) / pair) if pair > 0 else 0
