"""Timing helper: warm-up, synchronised repetitions, median / p50 / p99 and spread.

    t = time_call(fn, TimingConfig(warmup=3, min_repeats=5, seconds=2.0), sync=torch.cuda.synchronize)
The clock is injectable so the statistics are tested on a deterministic workload.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


@dataclass
class TimingConfig:
    warmup: int = 2  # untimed calls first: lazy init, cuDNN algorithm search, allocator growth
    min_repeats: int = 5  # at least this many timed calls, however long each takes
    max_repeats: int = 1000  # at most this many timed calls, however fast each is
    seconds: float = 1.0  # keep repeating until this much timed work is done (then stop)


@dataclass
class Timing:
    """Wall-clock seconds of each timed call (sync'd), and their statistics."""

    times: list[float] = field(repr=False)  # seconds per call, in call order
    warmup: int = 0  # calls made before timing started

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return percentile(self.times, 50)

    @property
    def p99(self) -> float:
        return percentile(self.times, 99)

    @property
    def mean(self) -> float:
        return sum(self.times) / len(self.times)

    @property
    def stdev(self) -> float:
        """Sample standard deviation (0 for a single call)."""
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((t - m) ** 2 for t in self.times) / (self.n - 1))

    @property
    def iqr(self) -> float:
        """Inter-quartile range p75 - p25: the spread, robust to the odd slow call."""
        return percentile(self.times, 75) - percentile(self.times, 25)

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "warmup": self.warmup, "median_s": self.median, "p50_s": self.median,
                "p99_s": self.p99, "mean_s": self.mean, "stdev_s": self.stdev, "iqr_s": self.iqr,
                "min_s": min(self.times), "max_s": max(self.times),
                "rel_spread": self.iqr / self.median if self.median > 0 else 0.0}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default 'linear' method), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_call(
    fn: Callable[[], Any],
    cfg: TimingConfig | None = None,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time fn(): cfg.warmup untimed calls, then timed calls until both min_repeats and
    cfg.seconds are reached (or max_repeats). sync() (e.g. a device synchronise) runs
    before each start and before each stop so queued asynchronous work is inside the
    timed region and none of the previous call's work leaks into the next.
    """
    cfg = cfg or TimingConfig()
    if cfg.min_repeats < 1 or cfg.max_repeats < cfg.min_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {cfg.min_repeats}, {cfg.max_repeats}")
    sync = sync or (lambda: None)
    for _ in range(cfg.warmup):
        fn()
    sync()
    times: list[float] = []
    total = 0.0
    while len(times) < cfg.max_repeats and (len(times) < cfg.min_repeats or total < cfg.seconds):
        t0 = clock()
        fn()
        sync()
        dt = clock() - t0
        times.append(dt)
        total += dt
    return Timing(times=times, warmup=cfg.warmup)


def timed(fn: Callable[[], Any], sync: Callable[[], None], seconds: float, warmup: int) -> Timing:
    """A bench stage's timing: warm-up and repeats scaled to the call. A call slower than seconds/4
    (after its first, which pays for allocation, algorithm search and compilation) gets no more
    warm-up and 3 repeats; faster calls get `warmup` untimed calls and at least 5 timed ones."""
    probes = []
    for _ in range(max(1, min(2, warmup))):
        t0 = time.perf_counter()
        fn()
        sync()
        probes.append(time.perf_counter() - t0)
    slow = probes[-1] > seconds / 4
    tc = TimingConfig(warmup=0 if slow else max(0, warmup - len(probes)), min_repeats=3 if slow else 5,
                      seconds=seconds)
    t = time_call(fn, tc, sync=sync)
    t.warmup += len(probes)
    return t


def timing_config_for(seconds: float, warmup: int = 2) -> TimingConfig:
    """The config a bench --seconds N uses for one timed stage."""
    return TimingConfig(warmup=warmup, min_repeats=5 if seconds >= 0.5 else 3, seconds=seconds)


def as_dict(cfg: TimingConfig) -> dict[str, Any]:
    return asdict(cfg)
