"""How many threads a forward pass on the CPU gets, chosen by timing the passes as they run.

The best count depends on the batch and on what else runs on the machine. A small batch gains little
from intra-op threads, and every thread of a parallel region waits for the slowest, so one thread
descheduled by the API server or a client stalls the whole pass (measured on 2 busy cores: one stream
ran at 23 tok/s with 2 threads, 35 with 1); an idle machine with more cores may gain even at one row. A
rule tuned on one machine is wrong on the next, so ``ThreadTuner`` measures: for each size of batch (by
powers of two) it times steps with each candidate count, keeps a moving average, runs the fastest, and
tries the others again now and then, since the load on the machine changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXPLORE_EVERY = 256  # steps of one batch size between two tries of the other counts
TRIAL_STEPS = 4  # steps a count is tried for before its average counts
WEIGHT = 0.2  # of the newest step in the moving average


@dataclass
class _Bucket:
    seconds: dict[int, float] = field(default_factory=dict)  # threads -> moving average of a step
    samples: dict[int, int] = field(default_factory=dict)
    steps: int = 0
    trying: int | None = None  # a count being tried again
    tried: int = 0


class ThreadTuner:
    def __init__(self, choices: tuple[int, ...]) -> None:
        self.choices = tuple(sorted(set(choices)))
        self._buckets: dict[int, _Bucket] = {}

    def pick(self, rows: int) -> int:
        """The thread count for the next step of a batch of ``rows`` rows."""
        bucket = self._bucket(rows)
        for threads in self.choices:  # each count gets its first steps before anything is compared
            if bucket.samples.get(threads, 0) < TRIAL_STEPS:
                return threads
        if bucket.trying is not None:
            return bucket.trying
        best = self.best(rows)
        if bucket.steps >= EXPLORE_EVERY and len(self.choices) > 1:
            bucket.steps = 0
            others = [t for t in self.choices if t != best]
            bucket.trying, bucket.tried = min(others, key=lambda t: bucket.samples.get(t, 0)), 0
            return bucket.trying
        return best

    def record(self, rows: int, threads: int, seconds: float) -> None:
        """A step of ``rows`` rows took ``seconds`` with ``threads`` threads."""
        bucket = self._bucket(rows)
        bucket.steps += 1
        old = bucket.seconds.get(threads)
        bucket.seconds[threads] = seconds if old is None else (1 - WEIGHT) * old + WEIGHT * seconds
        bucket.samples[threads] = bucket.samples.get(threads, 0) + 1
        if bucket.trying == threads:
            bucket.tried += 1
            if bucket.tried >= TRIAL_STEPS:
                bucket.trying = None

    def best(self, rows: int) -> int:
        """The count with the fastest average so far for this size of batch (the most threads if none)."""
        seconds = self._bucket(rows).seconds
        return min(seconds, key=lambda t: seconds[t]) if seconds else self.choices[-1]

    def _bucket(self, rows: int) -> _Bucket:
        return self._buckets.setdefault(max(rows, 1).bit_length(), _Bucket())
