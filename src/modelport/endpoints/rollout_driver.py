"""The rollout controller: what happens to a RUNNING rollout as time passes, and the thread that drives it.

``RolloutDriver.tick`` looks at every RUNNING rollout. A step begins once the target deployment is
ready (STARTED, with a replica answering): the target gets the step's percent of the pair's combined
weight and the source the rest (``Routes.set_traffic``). Once the step has run its ``stepInterval``
(stretched to cover its gates' windows), the gates are read (``rollout_gates.py``): all passing moves
to the next step, or after the last (100 %) completes the rollout and applies the final replicas; a
breached gate gives the source its traffic back and leaves the rollout SYSTEM_PAUSED with a condition
naming the metric. A target that will not become ready by itself (stopped, failed) pauses it the same
way.

Every effect goes traffic first, then the row: a crash between the two leaves the row where it was, and
the next tick (on a restarted server, from the row alone) does the same again, which sets the same
weights. The traffic stats are this server's memory: after a restart the gates read UNAVAILABLE until
requests come in again.

``RolloutController`` is the thread that calls ``tick`` every ``rollout_interval_s``, and at once when a
request has changed a rollout (``RolloutDriver.changed``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import select

from modelport.accounts.service import Principal
from modelport.endpoints.events import Events, Level
from modelport.endpoints.rollout_gates import UNAVAILABLE, Verdict, evaluate
from modelport.endpoints.rollout_spec import finals_of, gates_of, wait_of
from modelport.endpoints.rollout_states import RolloutState, StepState, move
from modelport.endpoints.routes import Routes
from modelport.endpoints.service import new_etag
from modelport.endpoints.states import EndpointState
from modelport.endpoints.supervisor import ReplicaLoad
from modelport.endpoints.traffic import TrafficStats
from modelport.errors import ModelportError, NotFound
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Account, Endpoint, Rollout, Route, utcnow

log = logging.getLogger(__name__)

# Why a rollout stopped, as Together's SDK names it (``status.condition.category``).
BREACH = "ROLLOUT_FAILURE_CATEGORY_METRIC_REGRESSION"
NO_DATA = "ROLLOUT_FAILURE_CATEGORY_METRICS_UNAVAILABLE"
# A step whose gates have no data yet waits for some, this many times its own length (at least a minute),
# before it pauses: a quiet endpoint, or a target failing every request, never passes a gate unseen.
NO_DATA_STEPS, NO_DATA_MIN_S = 3, 60.0
TARGET_DOWN = "ROLLOUT_FAILURE_CATEGORY_TARGET_NOT_READY"
DOWN = (EndpointState.STOPPED, EndpointState.STOPPING, EndpointState.ERROR)  # will not become ready alone
_R = RolloutState


class Replicas(Protocol):
    """What the controller asks the supervisor: whether the target answers yet, and each replica's load."""

    def ready_replicas(self, endpoint_id: str) -> int: ...

    def replica_loads(self) -> list[ReplicaLoad]: ...


class RolloutDriver:
    def __init__(self, db: Database, routes: Routes, events: Events, stats: TrafficStats, replicas: Replicas) -> None:
        self.db, self.routes, self.events, self.stats, self.replicas = db, routes, events, stats, replicas
        # One writer of rollout rows at a time (the API's requests and the ticks), so a check made on a
        # row still holds when the row is written. Held across ``Routes.set_traffic``, never the reverse.
        self.lock = threading.Lock()
        self.changed = threading.Event()  # wakes the controller

    def tick(self) -> None:
        """Advance every RUNNING rollout by what is due now. Safe to call from any thread, tests included."""
        with self.db.read() as s:
            running = list(s.scalars(select(Rollout.id).where(Rollout.state == _R.RUNNING)))
        for rollout_id in running:
            try:
                with self.lock:
                    with self.db.read() as s:
                        row = s.get(Rollout, rollout_id)
                    if row is not None and row.state == _R.RUNNING:
                        self._advance(row)
            except Exception:  # one broken rollout must not stop the others
                log.exception("rollout %s: could not advance it", rollout_id)

    def _advance(self, row: Rollout) -> None:
        if row.step_started_at is not None:
            if utcnow() - row.step_started_at < timedelta(seconds=wait_of(row.spec)):
                return
            after = self._judge(row)
            if after is None:
                return
            row = after
        with self.db.read() as s:
            target = s.get(Endpoint, row.target_id)
        if target is None or target.state in DOWN:
            state = "deleted" if target is None else target.state
            message = f"target deployment is {state}: start it, then resume the rollout"
            self._hold(row, condition(TARGET_DOWN, message, row.current_step), None)
        elif target.state == EndpointState.STARTED and self.replicas.ready_replicas(target.id) > 0:
            self._begin(row)

    def _begin(self, row: Rollout) -> None:
        index, total = row.current_step, len(row.steps)
        percent = int(row.steps[index]["targetTrafficPercent"])
        self.shift(row, percent, f"rollout {row.id} step {index + 1}/{total}")

        def change(r: Rollout) -> None:
            r.steps = with_step(r.steps, index, StepState.RUNNING, [])
            r.step_started_at, r.traffic_percent = utcnow(), percent

        row = self.write(row.id, change, progress=True)
        self.event(row, "rollout.step", f"step {index + 1} of {total}: the target gets {percent}% of the traffic")

    def _judge(self, row: Rollout) -> Rollout | None:
        """Read the current step's gates: the row at its next step, or None when the rollout left RUNNING."""
        verdicts = self._verdicts(row)
        breached = [v for v in verdicts if v.breached]
        blind = [v for v in verdicts if v.verdict == UNAVAILABLE]
        index = row.current_step
        if breached:
            where = f"step {index + 1} ({row.traffic_percent}%)"
            message = f"gate breached at {where}: " + "; ".join(v.describe() for v in breached)
            self._hold(row, condition(BREACH, message, index, breached), verdicts)
            return None
        if blind:
            patience = max(NO_DATA_MIN_S, NO_DATA_STEPS * wait_of(row.spec))
            assert row.step_started_at is not None
            if utcnow() - row.step_started_at < timedelta(seconds=patience):
                return None  # the step runs on until its gates can see something
            names = ", ".join(v.gate.name for v in blind)
            message = f"no data for gate(s) {names} at step {index + 1} after {patience:g} s: is traffic reaching it?"
            self._hold(row, condition(NO_DATA, message, index, blind), verdicts)
            return None
        if index >= len(row.steps) - 1:
            self.complete(row, "every step passed", verdicts)
            return None

        def change(r: Rollout) -> None:
            r.steps = with_step(r.steps, index, StepState.PASSED, verdicts)
            r.current_step, r.step_started_at = index + 1, None

        row = self.write(row.id, change, progress=True)
        self.event(row, "rollout.step_passed", f"step {index + 1} passed{_gates_summary(verdicts)}")
        return row

    def _verdicts(self, row: Rollout) -> list[Verdict]:
        gates = gates_of(row.spec)
        inflight: dict[str, int] = {}
        if any(g.name == "inflight_requests" for g in gates):
            for load in self.replicas.replica_loads():
                inflight[load.endpoint_id] = inflight.get(load.endpoint_id, 0) + load.in_flight
        return [evaluate(g, row.target_id, row.source_id, self.stats, inflight) for g in gates]

    def _hold(self, row: Rollout, why: dict[str, Any], verdicts: Sequence[Verdict] | None) -> None:
        """SYSTEM_PAUSED: the source gets its traffic back, and the row says why (``why``: a condition)."""
        self.shift(row, 0, f"rollout {row.id} paused")
        message = str(why["message"])

        def change(r: Rollout) -> None:
            move(r, _R.SYSTEM_PAUSED, "pause")
            if verdicts is not None:
                r.steps = with_step(r.steps, r.current_step, StepState.FAILED, verdicts, failure=message)
            r.conditions = [*r.conditions, why]
            r.pause_info, r.traffic_percent, r.step_started_at = pause_info(message), 0, None

        row = self.write(row.id, change)
        kind = "rollout.gate_breached" if why["category"] == BREACH else "rollout.system_paused"
        self.event(row, kind, message, level=Level.WARN)

    def complete(self, row: Rollout, why: str, verdicts: Sequence[Verdict] | None) -> Rollout:
        """All the pair's traffic to the target, the final replicas, then the row: a crash on the way
        leaves it RUNNING, and the next tick completes it again with the same effect."""
        self.shift(row, 100, f"rollout {row.id} completed")
        self._apply_finals(row)

        def change(r: Rollout) -> None:
            move(r, _R.COMPLETED, "complete")
            if r.steps and r.steps[r.current_step]["state"] == StepState.RUNNING:
                r.steps = with_step(r.steps, r.current_step, StepState.PASSED, verdicts)
            r.traffic_percent, r.pause_info, r.step_started_at = 100, None, None

        row = self.write(row.id, change)
        self.event(row, "rollout.completed", f"rollout {row.id} completed: {why}")
        self.changed.set()
        return row

    def _apply_finals(self, row: Rollout) -> None:
        """The source to exactly ``finalSourceReplicas`` (0: stopped, 0/0); the target's floor raised to
        ``finalTargetReplicas`` (and its ceiling with it, if lower), keeping a higher floor it has."""
        with self.db.read() as s:
            route, account = s.get(Route, row.route_id), None
            target = s.get(Endpoint, row.target_id)
            if route is not None:
                account = s.get(Account, route.account_id)
        if route is None or account is None or target is None:
            return
        who = Principal(account.id, account.name, key_id=f"rollout:{row.id}")
        source_count, floor = finals_of(row.spec)
        scales: list[tuple[str, int, int]] = []
        if row.source_id and source_count is not None:
            scales.append((row.source_id, source_count, source_count))
        if floor is not None and (floor > target.min_replicas or floor > target.max_replicas):
            scales.append((target.id, max(floor, target.min_replicas), max(floor, target.max_replicas)))
        for deployment_id, low, high in scales:
            scale = {"autoscaling": {"min_replicas": low, "max_replicas": high}}
            try:
                self.routes.update_deployment(who, route, deployment_id, None, scale)
            except ModelportError as e:  # the traffic has moved; a scale that cannot happen is reported, not fatal
                message = f"could not scale the deployment to {low}-{high} replicas: {e.message}"
                self.event(row, "rollout.final_replicas_failed", message, level=Level.WARN, deployment=deployment_id)

    # --- helpers --------------------------------------------------------------------------------------
    def shift(self, row: Rollout, percent: int, why: str) -> None:
        """Give the target ``percent`` of the pair's combined weight and the source the rest."""

        def moved(weights: dict[str, float]) -> dict[str, float]:
            pair = weights.get(row.target_id, 0.0) + (weights.get(row.source_id, 0.0) if row.source_id else 0.0)
            pair = pair if pair > 0 else 1.0  # neither had traffic: they share the weight a lone deployment gets
            out = {row.target_id: pair * percent / 100}
            if row.source_id:
                out[row.source_id] = pair - out[row.target_id]
            return out

        self.routes.set_traffic(row.route_id, moved, why)

    def write(self, rollout_id: str, change: Callable[[Rollout], Any], *, progress: bool = False) -> Rollout:
        """Apply ``change`` to the row. ``progress``: a step began or passed while the rollout runs on, and
        the etag stays. The etag guards a user's move against another user's (and against the rollout
        having paused or finished meanwhile); were it renewed on every step, a CLI's read-then-move
        (``tg endpoints rollout --promote`` reads the etag, then sends it) would race a fast ladder."""
        with self.db.session() as s:
            row = s.get(Rollout, rollout_id)
            if row is None:
                raise NotFound(f"rollout {rollout_id!r} not found", param="rolloutId")
            change(row)
            if not progress:
                row.etag = new_etag()
            row.updated_at = utcnow()
        return row

    def event(
        self, row: Rollout, kind: str, message: str, *, level: Level = Level.INFO, deployment: str | None = None
    ) -> None:
        self.events.record(row.route_id, kind, message, level=level, deployment_id=deployment or row.target_id)


class RolloutController:
    """The thread that ticks ``RolloutDriver`` every ``interval_s``, and at once when a request changed one."""

    def __init__(self, driver: RolloutDriver, interval_s: float, active: Callable[[], bool] = lambda: True) -> None:
        self.driver, self.interval_s = driver, interval_s
        self.active = active  # whether this server holds the controller lease (``lease.py``)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="rollout-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.driver.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.active():
                    self.driver.tick()
            except Exception:  # the database away for a moment: try again next interval
                log.exception("rollout controller: tick failed")
            self.driver.changed.wait(self.interval_s)
            self.driver.changed.clear()


def with_step(
    steps: Sequence[dict[str, Any]],
    index: int,
    state: StepState,
    verdicts: Sequence[Verdict] | None,
    *,
    failure: str | None = None,
) -> list[dict[str, Any]]:
    """A copy of ``steps`` with one step's state (and verdicts) changed: JSON columns change by assignment."""
    out = [dict(s) for s in steps]
    if not 0 <= index < len(out):
        return out
    step = out[index]
    step["state"] = state.value
    if state == StepState.RUNNING:
        step.setdefault("startedAt", now())  # when it first ran: a resumed step keeps it
    if state in (StepState.PASSED, StepState.FAILED):
        step["completedAt"] = now()
    if failure:
        step["failureReason"] = failure
    if verdicts is not None:
        step["metrics"] = [v.wire() for v in verdicts]
    return out


def condition(category: str, message: str, step: int, verdicts: Sequence[Verdict] = ()) -> dict[str, Any]:
    """Why a rollout stopped, as ``status.condition(s)``: the CLI shows "<category> — <message> (step n)"."""
    body: dict[str, Any] = {"category": category, "message": message, "atStep": step, "observedAt": now()}
    if verdicts:
        body["metrics"] = [v.wire() for v in verdicts]
    return body


def pause_info(reason: str) -> dict[str, Any]:
    return {"reason": reason, "pausedAt": now()}


def now() -> str:
    """RFC 3339, as the wire's timestamps are (these live in JSON columns, not datetime ones)."""
    return utcnow().isoformat().replace("+00:00", "Z")


def _gates_summary(verdicts: Sequence[Verdict]) -> str:
    return (": " + "; ".join(f"{v.describe()} {v.verdict.rpartition('_')[2]}" for v in verdicts)) if verdicts else ""
