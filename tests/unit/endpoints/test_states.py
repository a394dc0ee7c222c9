"""The endpoint lifecycle table, and ``move``/``on_request`` holding every row to it."""

from __future__ import annotations

import pytest

from modelport.endpoints.states import (
    INITIAL,
    REQUESTS,
    RUNNING_STATES,
    TRANSITIONS,
    EndpointState,
    desired_in,
    initialize,
    move,
    on_request,
)
from modelport.errors import Conflict, InvalidRequest
from modelport.storage.db.tables import Endpoint

S = EndpointState


def endpoint_in(state: EndpointState, **columns: object) -> Endpoint:
    endpoint = Endpoint(id="endpoint-1", name="acme/base-1234")
    initialize(endpoint)
    for key, value in columns.items():
        setattr(endpoint, key, value)
    endpoint.state, endpoint.desired = state, desired_in(state)  # a row as the database could hold it
    return endpoint


def reachable(start: EndpointState) -> set[EndpointState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_table_has_a_row_for_every_state_and_no_dead_ends() -> None:
    assert set(TRANSITIONS) == set(EndpointState)
    assert reachable(INITIAL) == set(EndpointState)
    for state in EndpointState:
        assert S.STOPPED in reachable(state), state
        assert state not in TRANSITIONS[state]  # staying put is allowed by move itself, not by a row


def test_what_the_supervisor_and_users_do_is_allowed() -> None:
    for running in RUNNING_STATES:
        assert {S.STOPPING, S.STOPPED, S.ERROR} <= TRANSITIONS[running] | {running}
    assert S.STARTED in TRANSITIONS[S.PENDING] and S.STARTED in TRANSITIONS[S.STARTING]
    assert S.STARTING in TRANSITIONS[S.STARTED]  # a replica died and restarts
    assert TRANSITIONS[S.STOPPING] == {S.STOPPED, S.PENDING}
    assert TRANSITIONS[S.STOPPED] == TRANSITIONS[S.ERROR] == {S.PENDING}  # only a start request leaves them


@pytest.mark.parametrize("current", list(EndpointState))
@pytest.mark.parametrize("to", list(EndpointState))
def test_move_follows_the_table(current: EndpointState, to: EndpointState) -> None:
    endpoint = endpoint_in(current)
    if to == current or to in TRANSITIONS[current]:
        move(endpoint, to)
        assert (endpoint.state, endpoint.desired) == (to, desired_in(to))
    else:
        with pytest.raises(Conflict) as refused:
            move(endpoint, to)
        assert refused.value.status_code == 409
        assert refused.value.message == f"endpoint acme/base-1234 cannot go from {current} to {to}"
        assert (endpoint.state, endpoint.desired) == (current, desired_in(current))  # untouched


def test_desired_follows_the_state() -> None:
    assert {s for s in EndpointState if desired_in(s) == S.STARTED} == set(RUNNING_STATES)


def test_a_start_clears_the_last_failure_and_a_stop_releases_the_hardware() -> None:
    held = {"memory_bytes": 1, "replicas": 1}
    failed = endpoint_in(S.ERROR, error="replica exited with status 1 4 times", restarts=4)
    move(failed, S.PENDING)
    assert failed.error is None and failed.restarts == 0
    stopping = endpoint_in(S.STARTED, reservation=held)
    move(stopping, S.STOPPING)
    assert stopping.reservation == held  # its replicas still run
    move(stopping, S.STOPPED)
    assert stopping.reservation is None
    crashed = endpoint_in(S.STARTING, reservation=held, restarts=2)
    move(crashed, S.ERROR, error="replica was killed by SIGKILL 3 times", restarts=3)
    assert (crashed.error, crashed.restarts, crashed.reservation) == ("replica was killed by SIGKILL 3 times", 3, None)


def test_staying_put_counts_crashes_and_keeps_the_rest() -> None:
    endpoint = endpoint_in(S.STARTING, restarts=1, reservation={"gpus": [0]})
    move(endpoint, S.STARTING, restarts=2)
    assert (endpoint.state, endpoint.restarts, endpoint.reservation) == (S.STARTING, 2, {"gpus": [0]})
    move(endpoint, S.STARTING, restarts=0)
    assert endpoint.restarts == 0


def test_a_new_endpoint_is_stopped_and_holds_nothing() -> None:
    endpoint = Endpoint(id="endpoint-2", name="acme/new")
    initialize(endpoint)
    assert (endpoint.state, endpoint.desired, endpoint.error, endpoint.restarts) == (S.STOPPED, S.STOPPED, None, 0)
    assert endpoint.reservation is None


@pytest.mark.parametrize(
    ("current", "start", "stop"),
    [
        (S.STOPPED, S.PENDING, None),
        (S.STOPPING, S.PENDING, None),
        (S.ERROR, S.PENDING, None),
        (S.PENDING, None, S.STOPPING),
        (S.STARTING, None, S.STOPPING),
        (S.STARTED, None, S.STOPPING),
    ],
)
def test_user_requests(current: EndpointState, start: EndpointState | None, stop: EndpointState | None) -> None:
    endpoint = endpoint_in(current)
    assert on_request(endpoint, "STARTED") == start
    assert on_request(endpoint, "STOPPED") == stop


def test_every_request_is_an_allowed_move() -> None:
    for moves in REQUESTS.values():
        for current, target in moves.items():
            assert target in TRANSITIONS[current]


@pytest.mark.parametrize("wanted", ["PENDING", "STOPPING", "ERROR", "started", ""])
def test_only_started_and_stopped_can_be_asked_for(wanted: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        on_request(endpoint_in(S.STARTED), wanted)
    assert (refused.value.status_code, refused.value.code) == (400, "invalid_request")
    assert (refused.value.message, refused.value.param) == ("state must be STARTED or STOPPED", "state")
