"""ToolCallAdvisor: should the agent call a tool for the user's new request, or answer from the
result it already has? The host decides from elapsed time, the tool's freshness horizon and
whether the cached result covers the request (TicToc: models cannot do this from timestamps).

Decision rule, for the tool relevant to the last user message:
call when there is no earlier result, or the result does not cover the request, or its age
exceeds the tool's horizon; otherwise answer directly.

Tool relevance: request words (minus common words) in the tool's name count 2, in its
description or parameters 1, in the arguments or content of its cached exchange 1. With no
score above zero: a single tool is that tool; else the embedder's nearest tool (if given); else
the most recently called tool (a follow-up such as "And in Berlin?"). Deterministic: ties go to
the tool listed first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from memory.clock import Clock
from memory.temporal.coverage import COMMON_WORDS, Coverage, check_coverage
from memory.temporal.horizons import (
    Embedder,
    HorizonEstimate,
    HorizonResolver,
    ToolSpec,
    as_tool_spec,
    spec_text_fields,
    stable_digest,
    words,
)
from memory.temporal.signals import ElapsedSignals, ToolTiming, elapsed_signals, humanize_duration

ToolLike = ToolSpec | Mapping[str, Any] | Callable[..., Any]
NAME_SCORE = 2
DESCRIPTION_SCORE = 1
EXCHANGE_SCORE = 1


@dataclass(frozen=True)
class Decision:
    """The advice: call `tool` or answer directly, with the numbers behind it."""

    call_tool: bool
    tool: str | None
    age_s: float | None
    horizon_s: float | None
    coverage: bool | None
    reason: str
    volatility: str | None = None
    horizon_source: str | None = None


@dataclass(frozen=True)
class _ToolEntry:
    """What the advisor keeps per tool spec (cached by the spec's digest)."""

    spec: ToolSpec
    horizon: HorizonEstimate
    name_words: frozenset[str]
    description_words: frozenset[str]


class ToolCallAdvisor:
    """Advises call-or-answer per request; see the module docstring for the rule.

    `tool_specs` declare tools ahead of time (ToolSpec, OpenAI dicts or `@fresh_for` functions);
    a declared horizon there overrides the same-named tool passed to `decide`. `clock` gives
    "now" when `decide` gets no `now`; without either, the time of the last message is now.
    """

    def __init__(
        self,
        tool_specs: Iterable[ToolLike] | None = None,
        embedder: Embedder | None = None,
        clock: Clock | None = None,
        max_cache: int = 4096,
    ) -> None:
        self.embedder = embedder
        self.clock = clock
        self.max_cache = max_cache
        self.resolver = HorizonResolver(embedder=embedder, max_cache=max_cache)
        self._entries: dict[str, _ToolEntry] = {}
        self._declared: dict[str, _ToolEntry] = {}
        for tool in tool_specs or ():
            entry = self._entry(tool)
            self._declared[entry.spec.name] = entry

    def decide(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolLike] | None = None,
        now: float | str | datetime | None = None,
    ) -> Decision:
        """Advice for the last user message of `messages`, given the available `tools`."""
        signals = elapsed_signals(messages, now=now, clock=None if now is not None else self.clock)
        return self.decide_from(signals, messages, tools)

    def decide_from(
        self,
        signals: ElapsedSignals,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolLike] | None = None,
    ) -> Decision:
        """`decide` with the `elapsed_signals` of `messages` already computed (by a caller that
        needs them too, such as `inject_time`)."""
        request, entry = self._relevant(signals, messages, tools)
        if entry is None:
            return Decision(False, None, None, None, None, "no available tool is relevant")
        name, horizon = entry.spec.name, entry.horizon
        timing = signals.tools.get(name)

        def decision(call: bool, age: float | None, covered: bool | None, reason: str) -> Decision:
            return Decision(
                call_tool=call,
                tool=name,
                age_s=age,
                horizon_s=horizon.horizon_s,
                coverage=covered,
                reason=reason,
                volatility=horizon.volatility.value,
                horizon_source=horizon.source,
            )

        if timing is None or timing.since_last_result_s is None:
            return decision(True, None, None, f"no earlier {name} result")
        age = timing.since_last_result_s
        coverage = self._coverage(request, timing, entry.spec, messages, signals)
        if not coverage.covered:
            return decision(
                True,
                age,
                False,
                f"the cached {name} result does not cover the request: {coverage.reason}",
            )
        horizon_text = (
            f"{humanize_duration(horizon.horizon_s)} horizon "
            f"({horizon.volatility.value}, {horizon.source})"
        )
        if age > horizon.horizon_s:
            return decision(
                True,
                age,
                True,
                f"the {name} result is {humanize_duration(age)} old, past its {horizon_text}",
            )
        return decision(
            False,
            age,
            True,
            f"the {name} result is {humanize_duration(age)} old, within its "
            f"{horizon_text}, and covers the request: answer from it",
        )

    def ttl_decision(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolLike] | None,
        ttl_s: float,
    ) -> bool:
        """The fixed-TTL baseline: same tool choice, one TTL, no coverage check."""
        signals = elapsed_signals(messages)
        _, entry = self._relevant(signals, messages, tools)
        if entry is None:
            return False
        timing = signals.tools.get(entry.spec.name)
        if timing is None or timing.since_last_result_s is None:
            return True
        return timing.since_last_result_s > ttl_s

    def horizon(self, tool: ToolLike) -> HorizonEstimate:
        """The (declared or inferred) horizon the advisor uses for `tool`."""
        return self._entry(tool).horizon

    def _relevant(
        self,
        signals: ElapsedSignals,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolLike] | None,
    ) -> tuple[str, _ToolEntry | None]:
        """The last user request's text and the available tool relevant to it (if any)."""
        if signals.last_user_index is None:
            raise ValueError("messages contain no user message to advise on")
        request = _text(messages[signals.last_user_index].get("content"))
        return request, self._select(request, self._available(tools), signals, messages)

    def _available(self, tools: Sequence[ToolLike] | None) -> list[_ToolEntry]:
        if tools is None:
            return list(self._declared.values())
        entries = []
        for tool in tools:
            entry = self._entry(tool)
            declared = self._declared.get(entry.spec.name)
            entries.append(declared if declared is not None and declared.spec.horizon_s else entry)
        return entries

    def _entry(self, tool: ToolLike) -> _ToolEntry:
        # A ToolSpec or tool function is converted once: its digest keys both caches.
        converted = None if isinstance(tool, Mapping) else as_tool_spec(tool)
        key = stable_digest(tool) if converted is None else converted.digest()
        entry = self._entries.get(key)
        if entry is None:
            spec = converted if converted is not None else as_tool_spec(tool)
            name_text, rest = spec_text_fields(spec)
            entry = _ToolEntry(
                spec=spec,
                horizon=self.resolver.resolve(spec, digest=None if converted is None else key),
                name_words=frozenset(words(name_text)) - COMMON_WORDS,
                description_words=frozenset(words(rest)) - COMMON_WORDS,
            )
            if len(self._entries) >= self.max_cache:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = entry
        return entry

    def _select(
        self,
        request: str,
        entries: list[_ToolEntry],
        signals: ElapsedSignals,
        messages: Sequence[Mapping[str, Any]],
    ) -> _ToolEntry | None:
        if not entries:
            return None
        request_words = set(words(request)) - COMMON_WORDS
        best, best_score = entries[0], 0
        for entry in entries:
            score = NAME_SCORE * len(request_words & entry.name_words)
            score += DESCRIPTION_SCORE * len(request_words & entry.description_words)
            timing = signals.tools.get(entry.spec.name)
            if timing is not None and timing.last_result_content is not None:
                exchange = _exchange_words(timing)
                score += EXCHANGE_SCORE * len(request_words & exchange)
            if score > best_score:
                best, best_score = entry, score
        if best_score > 0 or len(entries) == 1:
            return best
        if self.embedder is not None:
            return self._nearest_by_embedding(request, entries)
        called = [
            (timing.last_call_index, entry)
            for entry in entries
            if (timing := signals.tools.get(entry.spec.name)) is not None
            and timing.last_call_index is not None
        ]
        return max(called, key=lambda pair: pair[0])[1] if called else None

    def _nearest_by_embedding(self, request: str, entries: list[_ToolEntry]) -> _ToolEntry:
        assert self.embedder is not None
        texts = [request] + [": ".join(spec_text_fields(e.spec)) for e in entries]
        vectors = np.asarray(self.embedder.embed(texts))
        similarity = vectors[1:] @ vectors[0]
        return entries[int(np.argmax(similarity))]

    def _coverage(
        self,
        request: str,
        timing: ToolTiming,
        spec: ToolSpec,
        messages: Sequence[Mapping[str, Any]],
        signals: ElapsedSignals,
    ) -> Coverage:
        return check_coverage(
            request,
            timing.last_result_arguments,
            timing.last_result_content or "",
            context=_exchange_texts(messages, timing, signals.last_user_index),
            tool=spec,
        )


_EXCHANGE_WORDS: dict[str, frozenset[str]] = {}
_EXCHANGE_WORDS_MAX = 4096  # bounded; a conversation's cached exchange is re-read every decision


def _exchange_words(timing: ToolTiming) -> frozenset[str]:
    """Words of a tool's cached exchange (its call's arguments and its result)."""
    arguments = " ".join(f"{k} {v}" for k, v in timing.last_result_arguments.items())
    text = f"{arguments} {timing.last_result_content or ''}"
    hit = _EXCHANGE_WORDS.get(text)
    if hit is None:
        hit = frozenset(words(text)) - COMMON_WORDS
        if len(_EXCHANGE_WORDS) >= _EXCHANGE_WORDS_MAX:
            _EXCHANGE_WORDS.clear()
        _EXCHANGE_WORDS[text] = hit
    return hit


def _exchange_texts(
    messages: Sequence[Mapping[str, Any]], timing: ToolTiming, last_user: int | None
) -> list[str]:
    """Texts of the exchange around the cached result: from the user message that led to the
    call up to the next user message (not including the request being advised on)."""
    call_index = timing.last_result_call_index
    if call_index is None:
        return []
    start = call_index
    while start > 0 and messages[start].get("role") != "user":
        start -= 1
    texts = []
    for index in range(start, len(messages)):
        if (index > call_index and messages[index].get("role") == "user") or index == last_user:
            break
        texts.append(_text(messages[index].get("content")))
    return texts


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)
