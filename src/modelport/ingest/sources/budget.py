"""A job's download budget: a floor on the rate and a deadline, so no source can hold a worker.

Ingest workers are few (``MODELPORT_WORKERS``) and shared by every account. A source that sends one
byte every few seconds never trips the stall timeout, yet would keep its worker for days; two such
URLs used to hold both workers for everyone. Every reader of a job's bytes (``http.py``'s readers,
the hub client's progress hook) reports here as the bytes come off the network, and the budget fails
the job with ``source_too_slow`` when

- the bytes received over ``window_s`` of *waiting on the network* average less than ``min_rate``
  (time spent waiting for our own unpacking, hashing or writing is not the source's fault and does
  not count), or
- the whole download, every file and retry included, has run past ``deadline_s``.

A reader blocked on a socket learns of either only when its next chunk arrives or its read times
out (``MODELPORT_FETCH_TIMEOUT_S``), so a job fails at most that long after the limit is crossed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from modelport.errors import SourceTooSlow
from modelport.humanize import human_bytes
from modelport.settings import Settings


class DownloadBudget:
    def __init__(
        self,
        what: str,
        *,
        min_rate: int,
        window_s: float,
        deadline_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.min_rate, self.window_s, self.deadline_s = what, min_rate, window_s, deadline_s
        self._clock = clock
        self._started = clock()
        self._bytes, self._waited = 0, 0.0
        self._lock = threading.Lock()  # zip members are read on several threads

    @classmethod
    def from_settings(cls, settings: Settings, what: str) -> DownloadBudget:
        return cls(
            what,
            min_rate=settings.fetch_min_bytes_per_s,
            window_s=settings.fetch_min_rate_window_s,
            deadline_s=settings.fetch_deadline_s,
        )

    def received(self, n: int, waited_s: float) -> None:
        """``n`` bytes arrived after ``waited_s`` seconds spent waiting for them (0 bytes: a timeout)."""
        with self._lock:
            self._bytes += n
            self._waited += waited_s
            if self._waited < self.window_s:
                got, waited = None, 0.0
            else:
                got, waited = self._bytes, self._waited
                self._bytes, self._waited = 0, 0.0
        if got is not None and self.min_rate and got < self.min_rate * waited:
            raise SourceTooSlow(
                f"{self.what} sent {human_bytes(got)} in {waited:.0f} s ({got / waited:.0f} bytes/s); downloads "
                f"slower than {human_bytes(self.min_rate)}/s are stopped so they cannot hold an ingest worker "
                "(MODELPORT_FETCH_MIN_BYTES_PER_S)"
            )
        self.check_deadline()

    def check_deadline(self) -> None:
        elapsed = self._clock() - self._started
        if elapsed > self.deadline_s:
            raise SourceTooSlow(
                f"the download from {self.what} did not finish within {self.deadline_s:.0f} s "
                "(MODELPORT_FETCH_DEADLINE_S)"
            )

    def timed(self, read: Callable[[], bytes]) -> bytes:
        """Run one network read, counting its bytes and the time it waited."""
        started = self._clock()
        data = read()
        self.received(len(data), self._clock() - started)
        return data
