"""Clocks: where "now" comes from, in seconds since the Unix epoch.

Every time-aware part of tempomem takes a `Clock` so that tests, gym episodes and replays can run
on simulated time (`SimClock`) and deployments on real time (`SystemClock`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Anything with `now() -> float`, seconds since the Unix epoch."""

    def now(self) -> float: ...


class SystemClock:
    """Real time whose readings never go backwards.

    The wall clock is read once, at construction, to anchor the epoch; after that time advances
    with the monotonic clock. A wall-clock jump (NTP step, a user changing the date) therefore
    never makes an elapsed time negative. The price: a long-lived clock drifts from the wall clock
    by whatever the wall clock was corrected by; call `resync()` to re-anchor (readings still
    never go backwards).
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last = -math.inf
        self._anchor_wall = wall()
        self._anchor_mono = monotonic()

    def now(self) -> float:
        with self._lock:
            reading = self._anchor_wall + (self._monotonic() - self._anchor_mono)
            self._last = max(self._last, reading)
            return self._last

    def resync(self) -> None:
        """Re-anchor to the wall clock; if the wall clock is behind, readings hold still."""
        with self._lock:
            self._anchor_wall = self._wall()
            self._anchor_mono = self._monotonic()


class SimClock:
    """Simulated time for tests, gym episodes and replays. It only moves when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = _finite("start", start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._t

    def advance(self, dt: float) -> float:
        """Move forward by `dt >= 0` seconds; returns the new time."""
        dt = _finite("dt", dt)
        if dt < 0:
            raise ValueError(f"SimClock.advance: dt must be >= 0, got {dt}")
        with self._lock:
            self._t += dt
            return self._t

    def set(self, t: float) -> float:
        """Jump to time `t`, which must not be earlier than now."""
        t = _finite("t", t)
        with self._lock:
            if t < self._t:
                raise ValueError(f"SimClock.set: time may not go backwards ({t} < now {self._t})")
            self._t = t
            return self._t


#: Epoch seconds a timestamp may take: 1970-01-01 to 9999-12-31 (what datetime can print).
MIN_EPOCH_S = 0.0
MAX_EPOCH_S = 253_402_300_799.0


def parse_timestamp(value: float | int | str | datetime) -> float:
    """Seconds since the epoch from an epoch number, an ISO-8601 string or an aware datetime.

    A timestamp without a timezone is ambiguous (whose midnight?), so it is an error rather than
    a guess. "Z" is accepted for UTC.
    """
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be a number, ISO-8601 string or datetime, got {value!r}")
    if isinstance(value, int | float):
        seconds = _finite("timestamp", float(value))
        if not MIN_EPOCH_S <= seconds <= MAX_EPOCH_S:
            raise ValueError(
                f"timestamp {seconds:g} is outside the years 1970-9999 "
                f"([{MIN_EPOCH_S:g}, {MAX_EPOCH_S:g}] epoch seconds)"
            )
        return seconds
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as err:
            raise ValueError(f"timestamp {value!r} is not ISO-8601") from err
        value = parsed
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"timestamp {value.isoformat()!r} has no timezone; add one (e.g. 'Z' or '+02:00')"
            )
        return value.timestamp()
    raise ValueError(
        f"timestamp must be a number, ISO-8601 string or datetime, got {type(value).__name__}"
    )


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value
