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
from services.learned_rates import StoredRates

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


class HookCore:
    """What every hook is built on: the event log, the advisor and, when the advisor learns
    change rates (``learn=True``), those rates kept in the log's store (`StoredRates`): loaded
    here, saved after each decision that learned something. A hook subclasses it and sets up
    its own state in `_init_hook`, so the constructor is written once."""

    def __init__(
        self,
        event_log: AgentEventLog,
        advisor: ToolCallAdvisor | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        learn: bool = False,
    ) -> None:
        self.log = event_log
        self.advisor = advisor or ToolCallAdvisor(clock=event_log.clock, learn=learn)
        self.tool_specs = [dict(t) for t in tools] if tools else None
        self.short_circuits = 0  # tool calls answered from the cache
        self.stored_rates = (
            StoredRates(event_log.store, self.advisor.rates) if self.advisor.learn else None
        )
        if self.stored_rates is not None:
            safe("loading tool change rates", self.stored_rates.load)
        self._init_hook()

    def _init_hook(self) -> None:
        """The hook's own state (none here)."""

    def logged_time_line(self, specs: Sequence[Any] | None) -> str | None:
        """`time_line` of this hook's log and advisor; saves learned rates."""
        line = time_line(self.log, self.advisor, specs)
        self.save_rates()
        return line

    def logged_cached_result(
        self, name: str, arguments: Mapping[str, Any], specs: Sequence[Any] | None
    ) -> str | None:
        """`cached_result` of this hook's log and advisor; saves learned rates."""
        result = cached_result(self.log, self.advisor, name, arguments, specs)
        self.save_rates()
        return result

    def save_rates(self) -> None:
        """Save learned change rates if they moved (a no-op unless the advisor learns)."""
        if self.stored_rates is not None:
            safe("saving tool change rates", self.stored_rates.save)
