"""The download budget's arithmetic, on a clock the test moves."""

from __future__ import annotations

import pytest

from modelport.errors import SourceTooSlow
from modelport.ingest.sources.budget import DownloadBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(clock: Clock, *, min_rate: int = 1000, window_s: float = 10.0, deadline_s: float = 100.0) -> DownloadBudget:
    return DownloadBudget("the source", min_rate=min_rate, window_s=window_s, deadline_s=deadline_s, clock=clock)


def test_the_floor_is_judged_once_a_window_of_waiting_has_passed() -> None:
    clock = Clock()
    b = budget(clock)
    for _ in range(9):
        b.received(1, 1.0)  # 1 byte/s, but not a whole window yet
    with pytest.raises(SourceTooSlow, match=r"sent 10 B in 10 s \(1 bytes/s\).*MODELPORT_FETCH_MIN_BYTES_PER_S"):
        b.received(1, 1.0)


def test_a_fast_window_resets_the_count() -> None:
    clock = Clock()
    b = budget(clock)
    b.received(20_000, 10.0)  # 2000 bytes/s: fine, a new window starts
    for _ in range(9):
        b.received(0, 1.0)  # a timeout's worth of nothing, not yet a window
    b.received(10_000, 1.0)  # 10 000 bytes in this 10 s window: exactly the floor


def test_time_spent_not_waiting_on_the_network_does_not_count() -> None:
    clock = Clock()
    b = budget(clock)
    for _ in range(50):
        clock.now += 1.0  # our own unpacking is slow; each read returns at once
        b.received(100, 0.01)


def test_the_deadline_counts_wall_time_whatever_the_rate() -> None:
    clock = Clock()
    b = budget(clock, deadline_s=30.0)
    clock.now = 29.0
    b.received(10**6, 1.0)
    clock.now = 31.0
    with pytest.raises(SourceTooSlow, match=r"did not finish within 30 s.*MODELPORT_FETCH_DEADLINE_S"):
        b.received(10**6, 1.0)
    with pytest.raises(SourceTooSlow):
        b.check_deadline()


def test_a_floor_of_zero_is_off() -> None:
    clock = Clock()
    b = budget(clock, min_rate=0)
    for _ in range(100):
        b.received(0, 1.0)


def test_timed_reports_the_read_and_its_wait() -> None:
    clock = Clock()
    b = budget(clock, window_s=2.0)

    def slow_read() -> bytes:
        clock.now += 3.0
        return b"x"

    with pytest.raises(SourceTooSlow, match="sent 1 B in 3 s"):
        b.timed(slow_read)
