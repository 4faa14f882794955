"""The clock of the MCP commands: real time, or simulated time (`--clock sim`) that only moves
when a client calls the test tool `tempomem_advance_clock`, so tests and replays can age
results without waiting. The test tool is listed only with `--clock sim`."""

from __future__ import annotations

import math
from typing import Any, Literal

from memory.clock import Clock, SimClock, SystemClock
from memory.numbers import is_real
from services.agent_log import iso

ClockKind = Literal["system", "sim"]
ADVANCE_TOOL_NAME = "tempomem_advance_clock"
ADVANCE_TOOL_DESCRIPTION = (
    "Test tool of --clock sim: move the simulated clock forward by `seconds`; returns the new time."
)
ADVANCE_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"seconds": {"type": "number", "minimum": 0}},
    "required": ["seconds"],
    "additionalProperties": False,
}
#: Advancing the clock changes what every later answer says: an action, not a lookup.
ADVANCE_TOOL_ANNOTATIONS = {"readOnlyHint": False, "destructiveHint": False}


def make_clock(kind: str) -> Clock:
    """`SystemClock()` for "system"; for "sim" a `SimClock` that starts at the current time,
    rounded down to a whole second (ages then come out exact)."""
    if kind == "system":
        return SystemClock()
    if kind == "sim":
        return SimClock(start=float(math.floor(SystemClock().now())))
    raise ValueError(f"--clock must be 'system' or 'sim', got {kind!r}")


def reading(clock: Clock) -> dict[str, Any]:
    """What `now` answers: ISO-8601 time, epoch seconds and the kind of clock."""
    t = clock.now()
    return {"time": iso(t), "t": t, "clock": "sim" if isinstance(clock, SimClock) else "system"}


def advance(clock: Clock, seconds: Any) -> dict[str, Any]:
    """Move a simulated clock forward; a `ValueError` for a real clock or a bad number."""
    if not isinstance(clock, SimClock):
        raise ValueError(f"{ADVANCE_TOOL_NAME} works only with --clock sim")
    if not is_real(seconds):
        raise ValueError(f"seconds must be a number, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
    clock.advance(float(seconds))
    return reading(clock)
