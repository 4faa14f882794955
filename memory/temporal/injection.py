"""Rewrite a conversation for a model that cannot do time arithmetic: every message prefixed
with its time and age, plus one system line with elapsed times per tool and the advice.

Pure: returns new messages and never mutates its input.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from memory.clock import Clock
from memory.temporal.signals import (
    ElapsedSignals,
    describe_signals,
    elapsed_signals,
    humanize_duration,
)

if TYPE_CHECKING:
    from memory.temporal.advisor import Decision, ToolCallAdvisor, ToolLike


def format_time(epoch_s: float) -> str:
    """'2025-10-08 09:00:03 UTC': one unambiguous zone for every message."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def inject_time(
    messages: Sequence[Mapping[str, Any]],
    now: float | str | datetime | None = None,
    *,
    clock: Clock | None = None,
    advisor: ToolCallAdvisor | None = None,
    tools: Sequence[ToolLike] | None = None,
    decision: Decision | None = None,
    keep_time_field: bool = False,
) -> list[dict[str, Any]]:
    """New messages with time prefixes and a system line of elapsed times and advice.

    The advice is `decision` if given, else `advisor.decide(messages, tools, now)` if an advisor
    is given, else left out. The `time` fields are dropped (chat APIs reject unknown fields)
    unless `keep_time_field`.
    """
    signals = elapsed_signals(messages, now=now, clock=clock)
    if decision is None and advisor is not None:
        decision = advisor.decide_from(signals, messages, tools)
    rewritten: list[dict[str, Any]] = []
    for message, t, age in zip(
        messages, signals.message_times, signals.since_message_s, strict=True
    ):
        new = copy.deepcopy(dict(message))
        if not keep_time_field:
            new.pop("time", None)
        prefix = f"[{format_time(t)}, {_ago(age)}] "
        content = new.get("content")
        if isinstance(content, str):
            new["content"] = prefix + content
        elif isinstance(content, list):
            new["content"] = [{"type": "text", "text": prefix.rstrip()}, *content]
        rewritten.append(new)
    insert_at = 0
    while insert_at < len(rewritten) and rewritten[insert_at].get("role") == "system":
        insert_at += 1
    rewritten.insert(insert_at, {"role": "system", "content": elapsed_line(signals, decision)})
    return rewritten


def elapsed_line(signals: ElapsedSignals, decision: Decision | None = None) -> str:
    """The system line `inject_time` adds: "Current time: ... Elapsed: ... <advice>"."""
    lines = [f"Current time: {format_time(signals.now)}."]
    elapsed = describe_signals(signals)
    if elapsed:
        lines.append("Elapsed: " + "; ".join(elapsed) + ".")
    if decision is not None:
        lines.append(_advice(decision))
    return " ".join(lines)


def _ago(seconds: float) -> str:
    text = humanize_duration(seconds)
    return text if text == "just now" else f"{text} ago"


def _advice(decision: Decision) -> str:
    if decision.call_tool and decision.tool:
        return f"Advice: call {decision.tool} before answering ({decision.reason})."
    return f"Advice: answer directly without calling a tool ({decision.reason})."
