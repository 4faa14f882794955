"""Shared timing helpers: interleaved repeats and medians, because the machines are noisy."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

F = TypeVar("F")


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
    times: dict[bool, list[float]] = {True: [], False: []}
    with _gc_paused():
        for fn in _interleaved(ours, baseline, repeats):
            start = time.perf_counter()
            fn()
            times[fn is ours].append(time.perf_counter() - start)
    return _comparison(times[True], times[False])


async def compare_async(
    ours: Callable[[], Awaitable[object]],
    baseline: Callable[[], Awaitable[object]],
    repeats: int = 21,
    warmup: int = 3,
) -> Comparison:
    """`compare` for coroutines, timed inside the running event loop (no thread hops)."""
    for _ in range(warmup):
        await ours()
        await baseline()
    times: dict[bool, list[float]] = {True: [], False: []}
    with _gc_paused():
        for fn in _interleaved(ours, baseline, repeats):
            start = time.perf_counter()
            await fn()
            times[fn is ours].append(time.perf_counter() - start)
    return _comparison(times[True], times[False])


def _interleaved(ours: F, baseline: F, repeats: int) -> Iterator[F]:
    """ours, baseline, baseline, ours, ours, baseline, ...: `repeats` rounds, ABBA order."""
    for i in range(repeats):
        yield from (ours, baseline) if i % 2 == 0 else (baseline, ours)


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _comparison(ours_times: list[float], base_times: list[float]) -> Comparison:
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
