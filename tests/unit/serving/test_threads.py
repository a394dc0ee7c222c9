"""The thread tuner, fed step times: it settles on the fastest count per batch size and looks again."""

from __future__ import annotations

from modelport.serving.engines.torch.threads import EXPLORE_EVERY, TRIAL_STEPS, ThreadTuner


def run(tuner: ThreadTuner, rows: int, cost: dict[int, float], steps: int) -> list[int]:
    picked = []
    for _ in range(steps):
        threads = tuner.pick(rows)
        tuner.record(rows, threads, cost[threads])
        picked.append(threads)
    return picked


def test_it_tries_each_count_then_runs_the_fastest_per_batch_size() -> None:
    tuner = ThreadTuner((1, 2))
    small = run(tuner, 1, {1: 0.010, 2: 0.015}, 100)  # one row: one thread is faster here
    assert small[: 2 * TRIAL_STEPS].count(1) == TRIAL_STEPS and set(small[2 * TRIAL_STEPS :]) == {1}
    large = run(tuner, 16, {1: 0.060, 2: 0.035}, 100)  # sixteen rows: two threads are
    assert set(large[2 * TRIAL_STEPS :]) == {2}
    assert tuner.best(1) == 1 and tuner.best(4) == 2  # a size not seen yet takes the most threads
    assert tuner.best(16) == 2 and tuner.best(20) == 2  # 16 and 20 rows share a bucket (16-31)


def test_a_change_in_the_machine_is_found_at_the_next_look() -> None:
    tuner = ThreadTuner((1, 2))
    run(tuner, 1, {1: 0.010, 2: 0.015}, 50)
    assert tuner.best(1) == 1
    # The other core frees up: two threads become faster; the tuner keeps running one until it looks again.
    picked = run(tuner, 1, {1: 0.010, 2: 0.004}, 3 * EXPLORE_EVERY)
    assert 2 in picked and tuner.best(1) == 2 and picked[-1] == 2
