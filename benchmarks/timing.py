"""Shared timing helpers: interleaved repeats and medians, because the machines are noisy."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Comparison:
    """Median seconds of `ours` and `baseline`, timed alternately in the same run."""

    ours_s: float
    baseline_s: float
    paired_ratio: float  # median of per-round ours/baseline: robust to drifts in machine load

    @property
    def ratio(self) -> float:
        return self.ours_s / self.baseline_s


def compare(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    repeats: int = 21,
    warmup: int = 3,
) -> Comparison:
    """Time `ours` and `baseline` alternately (ABAB...), `repeats` rounds after `warmup`."""
    for _ in range(warmup):
        ours()
        baseline()
    ours_times: list[float] = []
    base_times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(repeats):
            order = (ours, baseline) if i % 2 == 0 else (baseline, ours)
            for fn in order:
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                (ours_times if fn is ours else base_times).append(elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
    paired = statistics.median(o / b for o, b in zip(ours_times, base_times, strict=True))
    return Comparison(statistics.median(ours_times), statistics.median(base_times), paired)


def median_time(fn: Callable[[], object], repeats: int = 21, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"
