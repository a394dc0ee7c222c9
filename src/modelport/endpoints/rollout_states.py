"""A rollout's lifecycle: its states, the moves allowed between them, and the one function that makes one.

Two parties move a rollout. The user asks (``start``, ``pause``, ``resume``, ``promote``, ``cancel``:
``REQUESTS`` says from where each may come and where it goes), and the controller's ``tick`` drives a
RUNNING one through its steps, pausing it on a breached gate (SYSTEM_PAUSED) and completing it. Both
write through ``move``; nothing else writes ``Rollout.state``.

A rollout is created PENDING, runs, may be paused by the user (PAUSED) or by a gate (SYSTEM_PAUSED),
and ends COMPLETED (the target has all the traffic) or CANCELED. Together's transitional states
(PAUSING, STABILIZING, CANCELLING) exist on the wire, but every move here takes effect at once, so no
rollout rests in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from modelport.errors import Conflict
from modelport.storage.db.tables import Rollout, utcnow


class RolloutState(StrEnum):
    """Wire values, as the together 3.x clients expect them."""

    PENDING = "ROLLOUT_STATE_PENDING"
    RUNNING = "ROLLOUT_STATE_RUNNING"
    PAUSING = "ROLLOUT_STATE_PAUSING"
    PAUSED = "ROLLOUT_STATE_PAUSED"
    SYSTEM_PAUSED = "ROLLOUT_STATE_SYSTEM_PAUSED"
    STABILIZING = "ROLLOUT_STATE_STABILIZING"
    CANCELLING = "ROLLOUT_STATE_CANCELLING"
    CANCELED = "ROLLOUT_STATE_CANCELED"
    COMPLETED = "ROLLOUT_STATE_COMPLETED"


class StepState(StrEnum):
    PENDING = "ROLLOUT_STEP_STATE_PENDING"
    RUNNING = "ROLLOUT_STEP_STATE_RUNNING"
    PASSED = "ROLLOUT_STEP_STATE_PASSED"
    FAILED = "ROLLOUT_STEP_STATE_FAILED"


_S = RolloutState

# The CLI treats these as final; everything else is active (``routes.ACTIVE_ROLLOUT_STATES``).
TERMINAL: Final = frozenset({_S.CANCELED, _S.COMPLETED})

# From each state, where a rollout may go next. Terminal states go nowhere.
TRANSITIONS: Final[Mapping[RolloutState, frozenset[RolloutState]]] = MappingProxyType(
    {
        _S.PENDING: frozenset({_S.RUNNING, _S.COMPLETED, _S.CANCELED}),  # COMPLETED: promoted before starting
        _S.RUNNING: frozenset({_S.PAUSED, _S.SYSTEM_PAUSED, _S.COMPLETED, _S.CANCELED}),
        _S.PAUSED: frozenset({_S.RUNNING, _S.COMPLETED, _S.CANCELED}),
        _S.SYSTEM_PAUSED: frozenset({_S.RUNNING, _S.PAUSED, _S.COMPLETED, _S.CANCELED}),
        _S.PAUSING: frozenset({_S.PAUSED, _S.CANCELED}),
        _S.STABILIZING: frozenset({_S.COMPLETED, _S.CANCELED}),
        _S.CANCELLING: frozenset({_S.CANCELED}),
        _S.CANCELED: frozenset(),
        _S.COMPLETED: frozenset(),
    }
)


# What each of the user's requests does, and from where: (the states it may come from, where it goes).
# The transitions above allow more (PAUSED -> RUNNING is both resume and, were it allowed, start), so a
# request is checked here first.
_ACTIVE: Final = frozenset(s for s in _S if s not in TERMINAL)
REQUESTS: Final[Mapping[str, tuple[frozenset[RolloutState], RolloutState]]] = MappingProxyType(
    {
        "start": (frozenset({_S.PENDING}), _S.RUNNING),
        "pause": (frozenset({_S.RUNNING, _S.SYSTEM_PAUSED}), _S.PAUSED),
        "resume": (frozenset({_S.PAUSED, _S.SYSTEM_PAUSED}), _S.RUNNING),
        "promote": (frozenset({_S.PENDING, _S.RUNNING, _S.PAUSED, _S.SYSTEM_PAUSED, _S.STABILIZING}), _S.COMPLETED),
        "cancel": (_ACTIVE, _S.CANCELED),
    }
)


def on_request(rollout: Rollout, request: str) -> RolloutState:
    """Where the user's ``request`` (start, pause, resume, promote, cancel) takes ``rollout``, or ``Conflict``."""
    sources, to = REQUESTS[request]
    if _S(rollout.state) not in sources:
        raise Conflict(f"rollout {rollout.id} is {_S(rollout.state).name}: it cannot {request}", param="rolloutId")
    check_move(rollout, to, request)
    return to


def is_terminal(state: str) -> bool:
    return state in TERMINAL


def check_move(rollout: Rollout, to: RolloutState, why: str) -> None:
    """Raise ``Conflict`` naming ``why`` (the request) if the table does not allow ``rollout`` to go to ``to``."""
    current = _S(rollout.state)
    if to not in TRANSITIONS[current]:
        raise Conflict(f"rollout {rollout.id} is {current.name}: it cannot {why}", param="rolloutId")


def move(rollout: Rollout, to: RolloutState, why: str) -> None:
    """Move ``rollout`` to ``to``, or raise ``Conflict`` if the table forbids it."""
    check_move(rollout, to, why)
    rollout.state = to
    rollout.updated_at = utcnow()
