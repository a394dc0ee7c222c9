"""An endpoint's lifecycle: its states, the moves allowed between them, and the one function that makes one.

Two parties move an endpoint. A user asks to start or stop it (``EndpointService``: ``on_request`` says
where that goes, the service reserves hardware for PENDING); the supervisor then drives it as replicas
launch, load, crash and stop. Both write through ``move``; nothing else writes ``state``, ``desired``,
``error`` or ``restarts``.

A started endpoint goes STOPPED -> PENDING (hardware reserved) -> STARTING (replicas launched) -> STARTED
(every replica answers), back to STARTING while a crashed replica restarts, and to ERROR when replicas
crash too often. A stop request or ``inactive_timeout`` moves it to STOPPING, and the supervisor to
STOPPED once its replicas are gone. STOPPED and ERROR hold no hardware.

``desired`` follows from ``state`` (STARTED while PENDING, STARTING or STARTED; STOPPED otherwise), so
the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from modelport.errors import Conflict, InvalidRequest
from modelport.storage.db.tables import Endpoint, utcnow


class EndpointState(StrEnum):
    """Wire values, as the together clients expect them."""

    PENDING = "PENDING"  # accepted, hardware reserved, replicas not yet launched
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


_S = EndpointState

# Where the supervisor must keep replicas running.
RUNNING_STATES = (_S.PENDING, _S.STARTING, _S.STARTED)

# Every endpoint is created here, holding no hardware.
INITIAL: Final = _S.STOPPED

# From each state, where an endpoint may go next. Staying put is always allowed (a crash counted while
# STARTING, the crash count forgiven while STARTED).
TRANSITIONS: Final[Mapping[EndpointState, frozenset[EndpointState]]] = MappingProxyType(
    {
        _S.STOPPED: frozenset({_S.PENDING}),
        _S.PENDING: frozenset({_S.STARTING, _S.STARTED, _S.STOPPING, _S.STOPPED, _S.ERROR}),
        _S.STARTING: frozenset({_S.STARTED, _S.STOPPING, _S.STOPPED, _S.ERROR}),
        _S.STARTED: frozenset({_S.STARTING, _S.STOPPING, _S.STOPPED, _S.ERROR}),
        _S.STOPPING: frozenset({_S.STOPPED, _S.PENDING}),  # PENDING: started again before it had stopped
        _S.ERROR: frozenset({_S.PENDING}),
    }
)

# What a user's request (the wire ``state`` of a PATCH) does from each state. A state missing from its
# row is left as it is: asking to start a started endpoint, or to stop a stopped one, is no error.
REQUESTS: Final[Mapping[EndpointState, Mapping[EndpointState, EndpointState]]] = MappingProxyType(
    {
        _S.STARTED: {_S.STOPPED: _S.PENDING, _S.STOPPING: _S.PENDING, _S.ERROR: _S.PENDING},
        _S.STOPPED: {_S.PENDING: _S.STOPPING, _S.STARTING: _S.STOPPING, _S.STARTED: _S.STOPPING},
    }
)

# Where a stopped or failed endpoint's hardware goes back to the pool.
_RELEASES: Final = frozenset({_S.STOPPED, _S.ERROR})


def desired_in(state: EndpointState) -> EndpointState:
    """What the user has asked for while an endpoint is in ``state``."""
    return _S.STARTED if state in RUNNING_STATES else _S.STOPPED


def initialize(endpoint: Endpoint) -> None:
    """A new endpoint row: STOPPED, holding nothing, never crashed."""
    endpoint.state, endpoint.desired, endpoint.error, endpoint.restarts = INITIAL, desired_in(INITIAL), None, 0
    endpoint.reservation = None


def on_request(endpoint: Endpoint, wanted: str) -> EndpointState | None:
    """Where a user's start (STARTED) or stop (STOPPED) request moves ``endpoint``; None: it is there already."""
    if wanted not in REQUESTS:
        raise InvalidRequest("state must be STARTED or STOPPED", param="state")
    return REQUESTS[_S(wanted)].get(_S(endpoint.state))


def move(endpoint: Endpoint, to: EndpointState, *, error: str | None = None, restarts: int | None = None) -> None:
    """Move ``endpoint`` to ``to``, or raise ``Conflict`` if the table does not allow it.

    Entering PENDING (a fresh start) clears the last error and the crash count; entering STOPPED or ERROR
    releases the reserved hardware. ``error``: why it failed (with ERROR); ``restarts``: the crash count.
    """
    current = _S(endpoint.state)
    if to != current and to not in TRANSITIONS[current]:
        raise Conflict(f"endpoint {endpoint.name} cannot go from {current} to {to}", param="state")
    endpoint.state, endpoint.desired = to, desired_in(to)
    if to == _S.PENDING:
        endpoint.error, endpoint.restarts = None, 0
    if error is not None:
        endpoint.error = error
    if restarts is not None:
        endpoint.restarts = restarts
    if to in _RELEASES:
        endpoint.reservation = None
    endpoint.updated_at = utcnow()
