"""The timing helper on deterministic workloads: call counts, stop rule and statistics (no speed asserts)."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.bench.timing import Timing, TimingConfig, percentile, time_call


class FakeClock:
    """A clock that only moves when the workload says so: durations are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_warmup_repeats_and_exact_durations():
    clock, calls, syncs = FakeClock(), [], []
    durations = [10.0, 20.0] + [0.1 * (i + 1) for i in range(50)]  # two slow warm-ups, then known steps

    def work() -> None:
        clock.now += durations[len(calls)]
        calls.append(1)

    t = time_call(work, TimingConfig(warmup=2, min_repeats=5, max_repeats=100, seconds=1.0),
                  sync=lambda: syncs.append(1), clock=clock)
    # timed calls 0.1, 0.2, 0.3, 0.4, 0.5 (sum 1.5 >= 1.0 after five, and five is the minimum)
    assert t.times == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert len(calls) == 2 + 5 and t.warmup == 2  # warm-up calls are not timed
    assert len(syncs) == 1 + 5  # once after the warm-up, once inside each timed call
    assert t.median == pytest.approx(0.3)
    assert t.mean == pytest.approx(0.3)
    assert t.stdev == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4, 0.5], ddof=1))
    assert t.iqr == pytest.approx(0.4 - 0.2)


def test_keeps_going_until_seconds_then_caps_at_max_repeats():
    clock = FakeClock()

    def work() -> None:
        clock.now += 0.01

    t = time_call(work, TimingConfig(warmup=0, min_repeats=3, max_repeats=1000, seconds=0.5), clock=clock)
    assert t.n == 50  # 50 x 0.01 s reaches 0.5 s
    t = time_call(work, TimingConfig(warmup=0, min_repeats=3, max_repeats=20, seconds=10.0), clock=clock)
    assert t.n == 20


def test_sync_runs_inside_the_timed_region():
    """Asynchronous work (queued, finished by sync) must be counted in its own call."""
    clock, pending = FakeClock(), []

    def launch() -> None:  # returns at once, like a GPU kernel launch
        pending.append(0.25)

    def sync() -> None:  # the device finishing the queued work
        while pending:
            clock.now += pending.pop()

    t = time_call(launch, TimingConfig(warmup=1, min_repeats=4, seconds=0.0), sync=sync, clock=clock)
    assert t.times == pytest.approx([0.25] * 4)


def test_percentiles_match_numpy_on_a_real_workload():
    """A real, sleep-free workload: check bookkeeping and statistics against numpy."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64))
    n_calls = []

    def work() -> None:
        n_calls.append(float(np.linalg.norm(a @ a)))

    t = time_call(work, TimingConfig(warmup=3, min_repeats=7, max_repeats=7, seconds=0.0))
    assert t.n == 7 and len(n_calls) == 10 and len(set(n_calls)) == 1  # same deterministic result each call
    assert all(x > 0 for x in t.times)
    for q in (0, 25, 50, 75, 99, 100):
        assert percentile(t.times, q) == pytest.approx(np.percentile(t.times, q))
    s = t.summary()
    assert s["min_s"] <= s["p50_s"] <= s["p99_s"] <= s["max_s"]
    assert s["n"] == 7 and s["warmup"] == 3


def test_bad_settings_and_empty_input():
    with pytest.raises(ValueError):
        time_call(lambda: None, TimingConfig(min_repeats=0))
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert Timing(times=[2.0]).stdev == 0.0
