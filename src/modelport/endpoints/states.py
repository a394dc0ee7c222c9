from __future__ import annotations

from enum import StrEnum


class EndpointState(StrEnum):
    """Wire values, as the together clients expect them."""

    PENDING = "PENDING"  # accepted, hardware reserved, replicas not yet launched
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


# Where the supervisor must keep replicas running.
RUNNING_STATES = (EndpointState.PENDING, EndpointState.STARTING, EndpointState.STARTED)
