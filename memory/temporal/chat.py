"""Read a chat in any common shape into one form: turns with a role, text, tool calls, tool
results and a time each.

Accepted shapes: OpenAI chat (`tool_calls`, `tool_call_id`, legacy `function_call`), OpenAI
Responses items (`function_call`, `function_call_output`), LangChain message dicts (`type`
human/ai/tool/system, or serialised as `{"type", "data"}`), Anthropic messages (content parts
`text`, `tool_use`, `tool_result`) and MCP tool results (`content` parts, `isError`, `_meta`).

Lenient on purpose: content may be None; arguments a dict, JSON or a Python literal; a result
without a known call id pairs with the oldest unanswered call of its tool (or of any tool); a
message without a time takes its neighbour's, a naive time is read as UTC, a time earlier than
the one before is held at that one, and each of these leaves a note. Only what is not a chat at
all (not a list of mappings, or no message) is a ValueError.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from memory.clock import Clock
from memory.temporal.memo import IdentityMemo
from memory.temporal.signals import content_text, parse_arguments
from memory.temporal.times import read_message_time, resolve_current_time, resolve_message_times

ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool: `index` is the message that made it."""

    id: str
    name: str
    arguments: Mapping[str, Any]
    index: int


@dataclass(frozen=True)
class ToolResult:
    """One tool result, with the call it answers (None when no call was found)."""

    name: str
    text: str
    index: int
    call: ToolCall | None
    flagged_error: bool = False  # MCP `isError`, Anthropic `is_error`, LangChain status "error"
    extra: Mapping[str, Any] | None = None  # message-level `_meta` / `headers`

    @property
    def arguments(self) -> Mapping[str, Any]:
        return {} if self.call is None else self.call.arguments


@dataclass(frozen=True)
class Turn:
    """A message in the common form."""

    role: str  # "system" | "user" | "assistant" | "tool"
    text: str
    calls: tuple[ToolCall, ...] = ()
    results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True)
class Chat:
    """A read chat: turns, their resolved times, now, and notes on what had to be guessed."""

    turns: tuple[Turn, ...]
    times: tuple[float | None, ...]
    now: float | None
    notes: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()
    last_request: int | None = None
    _results: Mapping[str, tuple[ToolResult, ...]] = field(default_factory=dict)
    _calls: Mapping[str, ToolCall] = field(default_factory=dict)

    def results(self, tool: str) -> tuple[ToolResult, ...]:
        """Results of `tool`, oldest first."""
        return self._results.get(tool, ())

    def all_results(self) -> Mapping[str, tuple[ToolResult, ...]]:
        """Results per tool name, oldest first."""
        return self._results

    def last_result(self, tool: str) -> ToolResult | None:
        found = self._results.get(tool)
        return found[-1] if found else None

    def last_call(self, tool: str) -> ToolCall | None:
        return self._calls.get(tool)

    def called_tools(self) -> Mapping[str, ToolCall]:
        return self._calls

    def age(self, index: int) -> float | None:
        """Seconds from message `index` to now (None when the chat has no times)."""
        t = self.times[index] if 0 <= index < len(self.times) else None
        return None if t is None or self.now is None else max(0.0, self.now - t)

    def text_before(self, index: int, role: str) -> str:
        """Text of the last `role` turn before `index` ("" if none)."""
        for turn in reversed(self.turns[:index]):
            if turn.role == role and turn.text:
                return turn.text
        return ""


def read_chat(
    messages: Any,
    now: float | str | datetime | None = None,
    clock: Clock | None = None,
) -> Chat:
    """`messages` in the common form, at `now` (else the clock's, else the last time)."""
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise ValueError(f"a chat is a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ValueError("no messages: nothing to advise on")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict | Mapping):
            raise ValueError(f"message {index}: expected a dict, got {type(message).__name__}")
        parsed.append(_MESSAGES.get(message, _parse))
    chat = _structure(tuple(parsed))
    flags = set(chat.flags)
    current, now_note = resolve_current_time(chat.times, now, clock, flags)
    if not now_note and current == chat.now:
        return chat
    return replace(chat, now=current, notes=(*chat.notes, *now_note), flags=frozenset(flags))


_STRUCTURES: dict[tuple[int, ...], tuple[tuple[_Message, ...], Chat]] = {}
_STRUCTURES_MAX = 4096


def _structure(parsed: tuple[_Message, ...]) -> Chat:
    """The chat of read messages at the time of its last message (remembered per sequence of
    read messages: a growing conversation re-reads only its new messages)."""
    key = tuple(map(id, parsed))
    hit = _STRUCTURES.get(key)
    if hit is not None and all(map(operator.is_, hit[0], parsed)):
        return hit[1]
    pairer = _Pairer()
    for index, message in enumerate(parsed):
        pairer.add(index, message)
    flags: set[str] = set()
    times, time_notes = resolve_message_times([m.time for m in parsed], flags)
    turns = pairer.turns
    last_request = next(
        (i for i in range(len(turns) - 1, -1, -1) if turns[i].role == "user" and turns[i].text),
        None,
    )
    chat = Chat(
        turns=tuple(turns),
        times=times,
        now=max((t for t in times if t is not None), default=None),
        notes=(*pairer.notes, *time_notes),
        flags=frozenset(flags),
        last_request=last_request,
        _results={name: tuple(found) for name, found in pairer.results.items()},
        _calls=pairer.last_calls,
    )
    if len(_STRUCTURES) >= _STRUCTURES_MAX:
        _STRUCTURES.clear()
    _STRUCTURES[key] = (parsed, chat)
    return chat


@dataclass(frozen=True)
class _RawCall:
    id: str | None
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class _RawResult:
    call_id: str | None
    name: str | None
    text: str
    flagged_error: bool
    extra: Mapping[str, Any] | None


@dataclass(frozen=True)
class _Message:
    """One message read on its own (before calls and results are paired)."""

    role: str
    text: str
    time: float | None
    calls: tuple[_RawCall, ...] = ()
    results: tuple[_RawResult, ...] = ()
    notes: tuple[str, ...] = ()  # "{index}" stands for the message's index


_MESSAGES: IdentityMemo[_Message] = IdentityMemo()


def _unwrap(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """LangChain's serialised form `{"type": "human", "data": {...}}` as one flat dict."""
    data = message.get("data")
    if isinstance(data, Mapping) and "content" not in message:
        return {**data, "type": message.get("type", data.get("type"))}
    return message


def _parse(message: Mapping[str, Any]) -> _Message:
    """One message read on its own."""
    message = _unwrap(message)
    kind = message.get("type")
    role = ROLES.get(str(message.get("role") or "").lower()) or ROLES.get(str(kind).lower())
    time, notes = read_message_time(message)
    if kind == "function_call":  # OpenAI Responses: a call item
        calls = _calls([message], notes)
        return _Message("assistant", "", time, calls, (), tuple(notes))
    if kind == "function_call_output":
        result = _raw_result(message.get("call_id"), None, message.get("output"), message)
        return _Message("tool", "", time, (), (result,), tuple(notes))
    texts: list[str] = []
    raw_calls: list[Mapping[str, Any]] = []
    results: list[_RawResult] = []
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            _part(part, texts, raw_calls, results)
    elif role != "tool" and content is not None:
        texts.append(content_text(content))
    raw_calls += _raw_calls(message)
    if role == "tool":
        call_id = message.get("tool_call_id") or message.get("call_id")
        call_id = call_id or message.get("tool_use_id")
        value = content if not isinstance(content, list) else " ".join(texts)
        results.append(_raw_result(call_id, message.get("name"), value, message))
        texts = []
    if role is None:
        notes.append("message {index} has no known role; read as the user's")
    text = " ".join(t for t in texts if t).strip()
    return _Message(
        role or "user", text, time, _calls(raw_calls, notes), tuple(results), tuple(notes)
    )


def _part(
    part: Any, texts: list[str], calls: list[Mapping[str, Any]], results: list[_RawResult]
) -> None:
    if isinstance(part, str):
        texts.append(part)
        return
    if not isinstance(part, Mapping):
        return
    kind = part.get("type")
    if kind in TEXT_PARTS or (kind is None and "text" in part):
        texts.append(str(part.get("text") or ""))
    elif kind in ("tool_use", "function_call", "tool_call"):
        calls.append(part)
    elif kind in ("tool_result", "function_call_output"):
        call_id = part.get("tool_use_id") or part.get("call_id")
        value = part.get("content", part.get("output"))
        results.append(_raw_result(call_id, part.get("name"), value, part))


def _raw_calls(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    calls = message.get("tool_calls")
    if not calls:
        extra = message.get("additional_kwargs")
        calls = extra.get("tool_calls") if isinstance(extra, Mapping) else None
    found = [c for c in calls or () if isinstance(c, Mapping)]
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping):
        found.append(legacy)
    return found


def _calls(raw_calls: list[Mapping[str, Any]], notes: list[str]) -> tuple[_RawCall, ...]:
    calls = []
    for raw in raw_calls:
        function = raw.get("function")
        source = function if isinstance(function, Mapping) else raw
        name = source.get("name")
        if not name:
            notes.append("message {index}: a tool call without a name was skipped")
            continue
        call_id = raw.get("id") or raw.get("call_id")
        arguments = source.get("arguments", source.get("args", source.get("input")))
        calls.append(
            _RawCall(str(call_id) if call_id else None, str(name), parse_arguments(arguments))
        )
    return tuple(calls)


def _raw_result(call_id: Any, name: Any, value: Any, raw: Mapping[str, Any]) -> _RawResult:
    text, flagged, extra = _result_content(value)
    flagged = flagged or bool(raw.get("is_error") or raw.get("isError"))
    flagged = flagged or str(raw.get("status", "")).lower() == "error"
    for key in ("_meta", "meta", "headers"):
        if isinstance(raw.get(key), Mapping):
            extra = {**(extra or {}), key: raw[key]}
    return _RawResult(
        str(call_id) if call_id else None, str(name) if name else None, text, flagged, extra
    )


def _result_content(value: Any) -> tuple[str, bool, Mapping[str, Any] | None]:
    """(text, flagged as error, `_meta`) of a result's content; MCP results unwrapped."""
    if isinstance(value, Mapping) and isinstance(value.get("content"), list):
        text = content_text(value["content"])
        structured = value.get("structuredContent")
        if not text.strip() and structured is not None:
            text = json.dumps(structured, sort_keys=True, default=str)
        meta = value.get("_meta")
        return text, bool(value.get("isError")), meta if isinstance(meta, Mapping) else None
    if isinstance(value, list):
        parts = [p for p in value if not isinstance(p, Mapping) or p.get("type") in TEXT_PARTS]
        if len(parts) == len(value):
            return content_text(value), False, None
        return json.dumps(value, sort_keys=True, default=str), False, None
    return content_text(value), False, None


class _Pairer:
    """Builds `Turn`s from read messages, pairing each result with its call."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self.notes: list[str] = []
        self.calls: dict[str, ToolCall] = {}
        self.pending: list[ToolCall] = []
        self.results: dict[str, list[ToolResult]] = {}
        self.last_calls: dict[str, ToolCall] = {}

    def add(self, index: int, message: _Message) -> None:
        self.notes += [note.replace("{index}", str(index)) for note in message.notes]
        calls = []
        for number, raw in enumerate(message.calls):
            call = ToolCall(raw.id or f"#{index}.{number}", raw.name, raw.arguments, index)
            self.calls[call.id] = call
            self.pending.append(call)
            self.last_calls[call.name] = call
            calls.append(call)
        results = tuple(self._result(index, raw) for raw in message.results)
        self.turns.append(Turn(message.role, message.text, tuple(calls), results))

    def _result(self, index: int, raw: _RawResult) -> ToolResult:
        call = self.calls.get(raw.call_id) if raw.call_id else None
        if call is None:  # no (known) id: the oldest unanswered call of its tool, or of any
            call = next((c for c in self.pending if raw.name and c.name == raw.name), None)
            call = call or (self.pending[0] if self.pending and not raw.name else None)
        if call is not None and call in self.pending:
            self.pending.remove(call)
        tool = raw.name or (call.name if call else "")
        result = ToolResult(tool, raw.text, index, call, raw.flagged_error, raw.extra)
        if tool:
            self.results.setdefault(tool, []).append(result)
        else:
            self.notes.append(f"message {index}: a tool result matches no call and names no tool")
        return result
