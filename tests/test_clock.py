"""Clocks and timestamp parsing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from memory import Clock, SimClock, SystemClock, parse_timestamp


class FakeOsClock:
    """The OS's wall and monotonic clocks, steerable: a wall-clock jump is one assignment."""

    def __init__(self) -> None:
        self.wall_s = 1_700_000_000.0
        self.mono_s = 50.0

    def wall(self) -> float:
        return self.wall_s

    def monotonic(self) -> float:
        return self.mono_s


def test_system_clock_survives_wall_clock_jumps() -> None:
    os_clock = FakeOsClock()
    clock = SystemClock(wall=os_clock.wall, monotonic=os_clock.monotonic)
    t0 = clock.now()
    assert t0 == pytest.approx(1_700_000_000.0)
    os_clock.mono_s += 2.0
    os_clock.wall_s -= 3600  # NTP steps the wall clock an hour back
    t1 = clock.now()
    assert t1 - t0 == pytest.approx(2.0)  # elapsed follows the monotonic clock
    os_clock.wall_s += 7200  # and forward
    os_clock.mono_s += 1.0
    assert clock.now() - t1 == pytest.approx(1.0)
    clock.resync()  # re-anchoring to a wall clock that is behind never goes backwards
    os_clock.wall_s -= 10_000
    clock.resync()
    assert clock.now() >= t1


def test_system_clock_real_time_is_monotone_and_near_wall() -> None:
    import time

    clock = SystemClock()
    readings = [clock.now() for _ in range(1000)]
    assert all(b >= a for a, b in itertools.pairwise(readings))
    assert abs(readings[-1] - time.time()) < 1.0
    assert isinstance(clock, Clock)


def test_sim_clock_moves_only_forward() -> None:
    clock = SimClock(start=100.0)
    assert clock.now() == 100.0
    assert clock.advance(2.5) == 102.5
    assert clock.set(200.0) == 200.0
    with pytest.raises(ValueError, match="backwards"):
        clock.set(199.0)
    with pytest.raises(ValueError, match="dt"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="finite"):
        clock.advance(float("nan"))
    assert clock.now() == 200.0
    assert isinstance(clock, Clock)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, 1_700_000_000.0),
        (1.5, 1.5),
        ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()),
        ("2024-03-01T14:00:00+02:00", datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()),
        ("2024-03-01 12:00:00.250+00:00", datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() + 0.25),
        (
            datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 1, 1, 5, tzinfo=UTC).timestamp(),
        ),
    ],
)
def test_parse_timestamp(value, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-03-01T12:00:00", "no timezone"),
        (datetime(2024, 1, 1), "no timezone"),
        ("yesterday", "ISO-8601"),
        (float("nan"), "finite"),
        (True, "number"),
        (None, "number"),
    ],
)
def test_parse_timestamp_rejects(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_timestamp(value)


@pytest.mark.parametrize("value", [-1.0, 1e20, 1e300, 253_402_300_800])
def test_parse_timestamp_rejects_epochs_no_calendar_can_print(value: float) -> None:
    with pytest.raises(ValueError, match="outside the years 1970-9999"):
        parse_timestamp(value)
