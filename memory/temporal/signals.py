"""Elapsed-time signals of a timestamped conversation, as numbers and as lines a model can read.

A conversation is a list of OpenAI chat messages, each with an ISO-8601 `time` (with timezone).
The host computes how long ago things happened, so the model does not have to do date arithmetic
(which it does badly, per TicToc).
"""

from __future__ import annotations

import ast
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from memory.clock import Clock, SystemClock, parse_timestamp
from memory.temporal.times import (
    read_message_time,
    resolve_current_time,
    resolve_message_times,
)

_UNITS: tuple[tuple[str, float], ...] = (
    ("year", 365 * 86400.0),
    ("day", 86400.0),
    ("hour", 3600.0),
    ("minute", 60.0),
    ("second", 1.0),
)


@dataclass(frozen=True)
class ToolTiming:
    """When a tool was last called and last answered, relative to now."""

    name: str
    since_last_call_s: float | None = None
    since_last_result_s: float | None = None
    last_call_index: int | None = None
    last_result_index: int | None = None
    last_result_call_index: int | None = None  # the assistant message that made that call
    # Arguments of the call whose result is the last result (not of a later, unanswered call).
    last_result_arguments: Mapping[str, Any] = field(default_factory=dict)
    last_result_content: str | None = None


@dataclass(frozen=True)
class ElapsedSignals:
    """Elapsed seconds since each message, the last user turn and each tool's last call/result."""

    now: float
    message_times: tuple[float, ...]
    since_message_s: tuple[float, ...]
    since_last_user_s: float | None
    last_user_index: int | None
    tools: Mapping[str, ToolTiming]
    notes: tuple[str, ...] = ()  # what had to be guessed or left out (see `elapsed_signals`)

    def lines(self) -> list[str]:
        """Short sentences a model can read, e.g. '3 days since the last get_weather result'."""
        return describe_signals(self)


def humanize_duration(seconds: float) -> str:
    """'45 seconds', '3 minutes', '2 hours 5 minutes', '3 days'; 'just now' under a second.

    Two units only when the larger one is small (< 10), where the second one still matters.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be finite and >= 0, got {seconds}")
    if seconds < 1:
        return "just now"
    for position, (unit, size) in enumerate(_UNITS):
        if seconds >= size:
            count = int(seconds // size)
            text = _plural(count, unit)
            remainder = seconds - count * size
            if count < 10 and position + 1 < len(_UNITS):
                sub_unit, sub_size = _UNITS[position + 1]
                sub_count = int(remainder // sub_size)
                if sub_count:
                    text += " " + _plural(sub_count, sub_unit)
            return text
    return "just now"  # unreachable: seconds >= 1 matches the last unit


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def parse_arguments(raw: Any, index: int | None = None) -> dict[str, Any]:
    """A tool call's arguments as a dict: a dict as is; a JSON object string (OpenAI); a Python
    literal dict string (`{'city': 'Oslo'}`, read with `ast.literal_eval`, never `eval`); any
    other value as `{"input": value}` (LangChain's name for a single-string tool input).

    `index` is kept for callers of the strict version; nothing here raises."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str):
        return dict(_string_arguments(raw))
    return {"input": raw}


@functools.lru_cache(maxsize=4096)
def _string_arguments(raw: str) -> tuple[tuple[str, Any], ...]:
    text = raw.strip()
    parsed: Any = raw
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = raw
    if isinstance(parsed, dict):
        return tuple((str(key), value) for key, value in parsed.items())
    return (("input", parsed),)


def elapsed_signals(
    messages: Sequence[Mapping[str, Any]],
    now: float | str | datetime | None = None,
    clock: Clock | None = None,
) -> ElapsedSignals:
    """Elapsed-time signals of a conversation at `now` (default: clock, else last message).

    Lenient like the advisor: a message without a (readable) time takes its neighbour's, a time
    going backwards is held, a `now` before the last message is held there, a tool result that
    matches no call is left out; each leaves a line in `notes`. With no time anywhere, every
    message is taken as sent now (the system clock's, unless `now` or `clock` say otherwise).
    Only what is not a list of messages raises ValueError.
    """
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise ValueError(f"a chat is a list of messages, got {type(messages).__name__}")
    notes: list[str] = []
    stamps: list[float | None] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index}: expected a dict, got {type(message).__name__}")
        t, read_notes = read_message_time(message)
        stamps.append(t)
        notes += [note.format(index=index) for note in read_notes]
    flags: set[str] = set()
    filled, time_notes = resolve_message_times(stamps, flags)
    current, now_notes = resolve_current_time(filled, now, clock, flags)
    if current is None:  # no time anywhere: the messages are as old as now
        current = SystemClock().now()
    times = tuple(current if t is None else t for t in filled)
    notes += time_notes + now_notes
    calls: dict[str, tuple[str, int, dict[str, Any]]] = {}  # call id -> (tool, index, args)
    last_call: dict[str, int] = {}
    last_result: dict[str, tuple[int, str, dict[str, Any], int]] = {}
    last_user: int | None = None
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "user":
            last_user = index
        for call in message.get("tool_calls") or ():
            function = (call.get("function") if isinstance(call, Mapping) else None) or {}
            name = function.get("name")
            if not name:
                notes.append(f"message {index}: a tool call without a function name; left out")
                continue
            args = parse_arguments(function.get("arguments"), index)
            calls[str(call.get("id"))] = (name, index, args)
            last_call[name] = index
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None or str(call_id) not in calls:
                notes.append(
                    f"message {index}: a tool result with tool_call_id {call_id!r} matches no "
                    "earlier tool call; left out"
                )
                continue
            name, made_at, args = calls[str(call_id)]
            last_result[name] = (index, content_text(message.get("content")), args, made_at)
    tools: dict[str, ToolTiming] = {}
    for name in last_call.keys() | last_result.keys():
        call_index = last_call.get(name)
        result = last_result.get(name)
        tools[name] = ToolTiming(
            name=name,
            since_last_call_s=None if call_index is None else current - times[call_index],
            since_last_result_s=None if result is None else current - times[result[0]],
            last_call_index=call_index,
            last_result_index=None if result is None else result[0],
            last_result_call_index=None if result is None else result[3],
            last_result_arguments={} if result is None else result[2],
            last_result_content=None if result is None else result[1],
        )
    return ElapsedSignals(
        now=current,
        message_times=times,
        since_message_s=tuple(current - t for t in times),
        since_last_user_s=None if last_user is None else current - times[last_user],
        last_user_index=last_user,
        tools=tools,
        notes=tuple(notes),
    )


def content_text(content: Any) -> str:
    """Message content as text: a string, the text parts of a multi-part content list, or
    (for anything else, e.g. a tool's JSON result) canonical JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) if isinstance(part, Mapping) else str(part)
            for part in content
        )
    try:
        return json.dumps(content, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(content)


def item_ages(
    items: Mapping[str, float | str | datetime],
    now: float | str | datetime | None = None,
    clock: Clock | None = None,
) -> dict[str, float]:
    """Age in seconds of arbitrary memory items (key -> timestamp) at `now` (or the clock's)."""
    if now is not None:
        current = parse_timestamp(now)
    elif clock is not None:
        current = clock.now()
    else:
        raise ValueError("item_ages needs `now` or a `clock`")
    ages: dict[str, float] = {}
    for key, stamp in items.items():
        try:
            t = parse_timestamp(stamp)
        except ValueError as err:
            raise ValueError(f"memory item {key!r}: {err}") from None
        if t > current:
            raise ValueError(f"memory item {key!r} is from the future ({t} > now {current})")
        ages[key] = current - t
    return ages


def describe_signals(signals: ElapsedSignals) -> list[str]:
    """One line per fact: since the last user message, and per tool since its last call/result."""
    lines = []
    if signals.since_last_user_s is not None:
        lines.append(f"{_ago(signals.since_last_user_s)} since the last user message")
    for name in sorted(signals.tools):
        timing = signals.tools[name]
        if timing.since_last_result_s is not None:
            lines.append(f"{_ago(timing.since_last_result_s)} since the last {name} result")
        elif timing.since_last_call_s is not None:
            lines.append(f"{_ago(timing.since_last_call_s)} since the last {name} call (no result)")
    return lines


def _ago(seconds: float) -> str:
    text = humanize_duration(seconds)
    return "0 seconds" if text == "just now" else text
