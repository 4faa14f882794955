"""What the agent-SDK hooks share, free of any SDK: the time line to inject and the
answer-from-cache decision, both read from an `AgentEventLog` with a `ToolCallAdvisor`.
Each hook only translates its SDK's messages, tools and arguments."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kv_store import StoreUnavailable
from memory.temporal import ToolCallAdvisor, elapsed_line
from memory.temporal.signals import elapsed_signals
from services.agent_log import AgentEventLog

log = logging.getLogger("services.hooks")


def safe(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(...)`, or None with a warning when the store is down: the agent goes on memoryless."""
    try:
        return fn(*args, **kwargs)
    except StoreUnavailable as err:
        log.warning("tempomem: %s skipped, store unavailable: %s", what, err)
        return None


def now_for(event_log: AgentEventLog, messages: list[dict[str, Any]]) -> float:
    """Now: the log's clock, but never before the newest logged message."""
    now = event_log.clock.now()
    return max(now, elapsed_signals(messages).now) if messages else now


def time_line(
    event_log: AgentEventLog, advisor: ToolCallAdvisor, specs: Sequence[Any] | None
) -> str | None:
    """'Current time: ... Elapsed: ... Advice: ...' for the logged conversation, or None
    before the first user message."""
    messages = event_log.messages()
    if not any(m.get("role") == "user" for m in messages):
        return None
    signals = elapsed_signals(messages, now=now_for(event_log, messages))
    return elapsed_line(signals, advisor.decide_from(signals, messages, specs))


def cached_result(
    event_log: AgentEventLog,
    advisor: ToolCallAdvisor,
    name: str,
    arguments: Mapping[str, Any],
    specs: Sequence[Any] | None,
) -> str | None:
    """The last result of tool `name` when the cached call had the same `arguments` and the
    advisor says it is fresh for the newest user message; else None."""
    messages = event_log.messages()
    if not any(m.get("role") == "user" for m in messages):
        return None
    signals = elapsed_signals(messages, now=now_for(event_log, messages))
    timing = signals.tools.get(name)
    if timing is None or timing.last_result_content is None:
        return None
    if dict(arguments) != dict(timing.last_result_arguments):
        return None
    decision = advisor.decide_from(signals, messages, specs)
    if decision.call_tool or decision.tool != name:
        return None
    return timing.last_result_content
