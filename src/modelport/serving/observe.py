"""What inference tells the rest of the platform as it works: token timings and finished requests.

``InferenceService`` reports to one ``Observer``; the composition root (``services.py``) hands it a
fan-out (``Observers``) of whatever listens: the Prometheus metrics and the per-account usage ledger.
Observers are called on the event loop, once per token for ``token``: they must only count, never block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"  # the engine or the request failed after it was accepted
    CANCELLED = "cancelled"  # the client went away before the end


class Kind(StrEnum):
    TEXT = "text"  # chat and plain completions
    EMBEDDING = "embedding"


@dataclass(frozen=True)
class Served:
    """One accepted request, at its end. ``model`` is the name the caller used (a model, adapter or
    endpoint); ``engine`` is where it ran (the shared engine's name, or ``replica``)."""

    account_id: str
    model: str
    kind: Kind
    engine: str
    prompt_tokens: int
    completion_tokens: int
    outcome: Outcome
    seconds: float


def percentile_of(values: list[float], percentile: float) -> float | None:
    """The nearest-rank percentile of timings (the console's charts, the rollout and A/B gates); None for
    no values. Integer arithmetic, so 99.9 of 1,000 values is the 999th, not float error's 1,000th."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(percentile * len(ordered)) // 100))
    return ordered[min(rank, len(ordered)) - 1]


class Observer(Protocol):
    def first_token(self, model: str, seconds: float) -> None:
        """A sequence's first token arrived ``seconds`` after the request was accepted."""
        ...

    def token(self, model: str, gap_s: float) -> None:
        """A later token arrived ``gap_s`` after the one before it (inter-token latency)."""
        ...

    def finished(self, served: Served) -> None: ...


class Observers:
    """Calls every observer; one that raises is logged and skipped, never fails the request."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def first_token(self, model: str, seconds: float) -> None:
        for o in self.observers:
            _safely(o.first_token, model, seconds)

    def token(self, model: str, gap_s: float) -> None:
        for o in self.observers:
            _safely(o.token, model, gap_s)

    def finished(self, served: Served) -> None:
        for o in self.observers:
            _safely(o.finished, served)


def _safely(call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except Exception:
        log.exception("an inference observer failed; continuing")
