"""Reading the times of chat messages: one owner for every reader of a chat's times.

`parse_time` reads an ISO-8601 string or an epoch number (a bounded cache of recent strings);
`read_message_time` finds and reads a message's time field, leniently (a naive time is read as
UTC, an unreadable one as missing, each with a note); `resolve_message_times` fills missing times
from the neighbours and holds times that go backwards, saying which.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from memory.clock import Clock, parse_timestamp

TIME_FIELDS = ("time", "timestamp", "created_at", "created")


_ISO_CACHE: dict[str, float] = {}
_ISO_CACHE_MAX = 4096  # bounded: timestamps of recent conversations, re-read at every decision


def parse_time(value: Any) -> float:
    """Epoch seconds of an ISO-8601 string (with a timezone), an epoch number or a datetime."""
    if isinstance(value, str):
        cached = _ISO_CACHE.get(value)
        if cached is not None:
            return cached
        parsed = parse_timestamp(value)
        if len(_ISO_CACHE) >= _ISO_CACHE_MAX:
            _ISO_CACHE.clear()
        _ISO_CACHE[value] = parsed
        return parsed
    if isinstance(value, int | float | datetime):
        return parse_timestamp(value)
    raise ValueError(f"time must be an ISO-8601 string or epoch number, got {value!r}")


def read_message_time(message: Mapping[str, Any]) -> tuple[float | None, list[str]]:
    """A message's time (None when it has none or it is unreadable) and notes, in which
    ``{index}`` stands for the message's index."""
    value = next((message[k] for k in TIME_FIELDS if message.get(k) is not None), None)
    if value is None:
        return None, []
    try:
        return parse_time(value), []
    except ValueError:
        pass
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            note = "message {index}'s time has no timezone; read as UTC"
            return parsed.replace(tzinfo=UTC).timestamp(), [note]
    return None, [f"message {{index}}'s time {value!r} is unreadable; treated as missing"]


def resolve_message_times(
    stamps: list[float | None], flags: set[str]
) -> tuple[tuple[float | None, ...], list[str]]:
    """Missing times from the neighbours (the previous one, else the next), never going
    backwards; notes say which messages were guessed or held."""
    if all(t is None for t in stamps):
        flags.add("no_times")
        return tuple(stamps), ["no message has a time: decided without ages"]
    missing = [i for i, t in enumerate(stamps) if t is None]
    filled = list(stamps)
    following = None
    for index in range(len(filled) - 1, -1, -1):
        if filled[index] is None:
            filled[index] = following
        else:
            following = filled[index]
    previous = None
    backwards: list[int] = []
    for index, t in enumerate(stamps):
        if t is None and previous is not None:
            filled[index] = previous
        elif t is not None and previous is not None and t < previous:
            backwards.append(index)
            filled[index] = previous
        previous = filled[index]
    notes = []
    if missing:
        flags.add("time_missing")
        notes.append(f"{message_list(missing)} no time; took the neighbouring message's time")
    if backwards:
        flags.add("time_backwards")
        notes.append(
            f"time goes backwards: {message_list(backwards, 'is', 'are')} earlier than the message "
            "before; held at that message's time"
        )
    return tuple(filled), notes


def message_list(indices: list[int], one: str = "has", many: str = "have") -> str:
    """'message 3 has' / 'messages 3, 5 have'."""
    shown = ", ".join(str(i) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")
    return f"message {shown} {one}" if len(indices) == 1 else f"messages {shown} {many}"


def resolve_current_time(
    times: tuple[float | None, ...],
    now: float | str | datetime | None,
    clock: Clock | None,
    flags: set[str],
) -> tuple[float | None, list[str]]:
    """Now: `now`, else the clock's reading, else the last message's time (None without any);
    a now before the last message is held there, with a note and the flag `clock_backwards`."""
    last = max((t for t in times if t is not None), default=None)
    if now is not None:
        current = parse_timestamp(now)
    elif clock is not None:
        current = clock.now()
    else:
        return last, []
    if last is not None and current < last:
        flags.add("clock_backwards")
        return last, [
            f"now ({current:.0f}) is earlier than the last message ({last:.0f}): the clock went "
            "backwards; measured ages from the last message"
        ]
    return current, []
