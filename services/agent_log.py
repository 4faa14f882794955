"""Agent event log: every message, tool call and tool result of one agent session, timestamped,
as events in a kv_store `Store` (a Redis Stream per session with `RedisStore`).

Events are plain JSON: `t` (seconds since the epoch), `kind` ("message", "tool_call",
"tool_result" or "llm_start") and the fields of that kind. `messages()` / `as_of(t)` turn them
back into OpenAI chat messages with ISO-8601 `time` fields, ready for
`memory.temporal.ToolCallAdvisor.decide` and `inject_time`.

Retrieval (`search`), EM-LLM style: similarity hits, then their temporal neighbours.
    relevance_i = max(0, cos(query, event_i))  (MiniLM if available, else lexical: cosine of
                  the sets of content words)
    recency_i   = 0.5 ** (age_i / half_life_s)  (age at `now`: the clock's reading)
    score_i     = relevance_i + recency_weight * recency_i
The `k` events with relevance > 0 and the best scores are hits; each hit's `contiguity`
neighbours on either side (in event order) are added with `contiguity_decay * score_hit`
unless already present. Results come best score first. Only the last `max_search_events` events
are searched (bounded work).

Time. An event's time is the one given (its `t` or the message's `time`), else the clock's now.
A given time earlier than the session's last event is a `ValueError` ("times going backwards"),
and so is one more than `max_future_s` (default 5 minutes) ahead of the clock: one event at
9999-12-31 would otherwise refuse every later event. An event recorded without a time while the
clock reads earlier than the last event (ordinary clock skew, at most `max_future_s`) is stored
at the last event's time instead of being refused. `reset()` empties the log.

Errors: a bad session id or message is a `ValueError`; `kv_store.StoreUnavailable` propagates
unchanged so that callers can degrade to memoryless operation.
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from kv_store.base import Store, check_name
from memory.clock import Clock, SystemClock, parse_timestamp
from memory.numbers import is_int
from memory.temporal.coverage import COMMON_WORDS
from memory.temporal.horizons import Embedder, words
from memory.temporal.signals import content_text

_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
KINDS = ("message", "tool_call", "tool_result", "llm_start")
ROLES = ("system", "user", "assistant", "tool", "developer")
DEFAULT_HALF_LIFE_S = 24 * 3600.0
DEFAULT_MAX_SEARCH_EVENTS = 2000
DEFAULT_MAX_FUTURE_S = 300.0
MAX_TEXT_CHARS = 64_000

_AUTO_EMBEDDER: list[Embedder | None] = []
_AUTO_LOCK = threading.Lock()


def check_session_id(session_id: str) -> str:
    """1-128 characters of letters, digits, '_', '.', '-', starting with a letter or digit."""
    return check_name(
        session_id,
        _SESSION_RE,
        "session_id must be 1-128 characters of letters, digits, '_', '.', '-' starting with a "
        "letter or digit",
    )


def iso(t: float) -> str:
    """ISO-8601 with a UTC offset (what `memory.temporal` expects in `time`)."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


@dataclass(frozen=True)
class SearchHit:
    """One retrieved event: `via` is "similarity" (a hit) or "contiguity" (a hit's neighbour)."""

    event: dict[str, Any]
    score: float
    relevance: float
    recency: float
    via: Literal["similarity", "contiguity"]


class AgentEventLog:
    """The timestamped event log of one agent session.

    Args:
        store: any kv_store `Store`; the stream is `agent.<session_id>.events`.
        session_id: validated with `check_session_id`.
        clock: where "now" comes from for events recorded without a time (default
            `SystemClock()`).
        embedder: for `search`; None: MiniLM when its wheel is installed (loaded once per
            process, on the first search), else lexical; "lexical": never load a model.
        half_life_s, recency_weight, contiguity, contiguity_decay, max_search_events: see the
            module docstring.
    """

    def __init__(
        self,
        store: Store,
        session_id: str,
        clock: Clock | None = None,
        embedder: Embedder | Literal["lexical"] | None = None,
        *,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        recency_weight: float = 0.1,
        contiguity: int = 1,
        contiguity_decay: float = 0.5,
        max_search_events: int = DEFAULT_MAX_SEARCH_EVENTS,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
    ) -> None:
        self.store = store
        self.session_id = check_session_id(session_id)
        self.stream = f"agent.{session_id}.events"
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.embedder = embedder
        if not (math.isfinite(half_life_s) and half_life_s > 0):
            raise ValueError(f"half_life_s must be a positive number, got {half_life_s!r}")
        if not (math.isfinite(recency_weight) and recency_weight >= 0):
            raise ValueError(f"recency_weight must be >= 0, got {recency_weight!r}")
        if not is_int(contiguity) or contiguity < 0:
            raise ValueError(f"contiguity must be an integer >= 0, got {contiguity!r}")
        if not 0 <= contiguity_decay <= 1:
            raise ValueError(f"contiguity_decay must be in [0, 1], got {contiguity_decay!r}")
        if max_search_events <= 0:
            raise ValueError(f"max_search_events must be > 0, got {max_search_events!r}")
        if not (math.isfinite(max_future_s) and max_future_s >= 0):
            raise ValueError(f"max_future_s must be a number >= 0, got {max_future_s!r}")
        self.max_future_s = float(max_future_s)
        self.half_life_s = float(half_life_s)
        self.recency_weight = float(recency_weight)
        self.contiguity = contiguity
        self.contiguity_decay = float(contiguity_decay)
        self.max_search_events = max_search_events
        self._last_t: float | None = None
        self._lock = threading.Lock()

    # -- recording -----------------------------------------------------------------------------
    def record_message(
        self, msg: Mapping[str, Any], t: float | str | datetime | None = None
    ) -> str:
        """Record an OpenAI chat message; its time is `t`, else its `time` field, else now.
        Returns the event id."""
        if not isinstance(msg, Mapping):
            raise ValueError(f"message must be a dict, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise ValueError(f"message role must be one of {ROLES}, got {role!r}")
        if t is None and msg.get("time") is not None:
            t = msg["time"]
        body = {k: v for k, v in msg.items() if k != "time" and v is not None}
        if role == "tool" and body.get("tool_call_id") is None:
            raise ValueError("a tool message needs a tool_call_id")
        for call in body.get("tool_calls") or ():
            if not isinstance(call, Mapping) or not (call.get("function") or {}).get("name"):
                raise ValueError(f"tool call without a function name: {call!r}")
        return self._append({"kind": "message", "message": body}, t)

    def record_tool_call(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None = None,
        call_id: str | None = None,
        t: float | str | datetime | None = None,
    ) -> str:
        """Record that the agent called tool `name`; returns the call id (made up if absent)."""
        _check_name(name)
        call_id = call_id or f"call_{uuid.uuid4().hex[:16]}"
        if isinstance(arguments, str):
            arg_text = arguments or "{}"
            try:
                json.loads(arg_text)
            except json.JSONDecodeError as err:
                raise ValueError(f"tool call arguments are not JSON: {err}") from None
        else:
            arg_text = json.dumps(dict(arguments or {}), sort_keys=True)
        self._append(
            {"kind": "tool_call", "name": name, "arguments": arg_text, "call_id": str(call_id)}, t
        )
        return str(call_id)

    def record_tool_result(
        self,
        call_id: str,
        content: Any,
        name: str | None = None,
        t: float | str | datetime | None = None,
        cached: bool = False,
    ) -> str:
        """Record the result of call `call_id` (content as text; non-strings as JSON).

        `cached=True`: the result was served from an earlier one (not new information); it is
        kept in `events()` but left out of `messages()` with its call, so ages stay true."""
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"call_id must be a non-empty string, got {call_id!r}")
        if name is not None:
            _check_name(name)
        text = content if isinstance(content, str) else content_text(content)
        record: dict[str, Any] = {
            "kind": "tool_result",
            "call_id": call_id,
            "content": text[:MAX_TEXT_CHARS],
        }
        if name is not None:
            record["name"] = name
        if cached:
            record["cached"] = True
        return self._append(record, t)

    def record_llm_start(
        self, model: str | None = None, t: float | str | datetime | None = None
    ) -> str:
        """A marker that the model was called (not part of `messages()`)."""
        return self._append({"kind": "llm_start", "model": model}, t)

    def reset(self) -> bool:
        """Forget every event of this session (a new conversation); True if there were any."""
        with self._lock:
            self._last_t = None
            return self.store.delete_stream(self.stream)

    def _append(self, record: dict[str, Any], t: float | str | datetime | None) -> str:
        with self._lock:
            now = self.clock.now()
            last = self._last_time()
            if t is None:
                when = now if last is None else max(now, last)  # clock skew: keep the order
            else:
                when = parse_timestamp(t)
                if when > now + self.max_future_s:
                    raise ValueError(
                        f"session {self.session_id!r}: event time {iso(when)} is more than "
                        f"{self.max_future_s:g} s ahead of this host's clock ({iso(now)})"
                    )
                if last is not None and when < last:
                    raise ValueError(
                        f"session {self.session_id!r}: event time {iso(when)} is earlier than "
                        f"the last event's ({iso(last)}): times may not go backwards (reset() "
                        "starts the log over)"
                    )
            event_id = self.store.append_event(self.stream, {**record, "t": when})
            self._last_t = when
            return event_id

    @property
    def last_time(self) -> float | None:
        """The time of the newest event (None while the log is empty)."""
        with self._lock:
            return self._last_time()

    def _last_time(self) -> float | None:
        if self._last_t is None:
            events = self.store.read_events(self.stream)
            if events:
                self._last_t = float(events[-1]["t"])
        return self._last_t

    # -- reading -------------------------------------------------------------------------------
    def events(self, start: float | None = None, end: float | None = None) -> list[dict[str, Any]]:
        """Raw events with `start <= t <= end`, oldest first (an unknown session: [])."""
        return self.store.read_events(self.stream, start=start, end=end)

    def as_of(self, t: float | str | datetime) -> list[dict[str, Any]]:
        """OpenAI messages of everything recorded up to and including time `t`."""
        return events_to_messages(self.events(end=parse_timestamp(t)))

    def messages(self) -> list[dict[str, Any]]:
        """All messages so far, with `time` fields: the input of `ToolCallAdvisor.decide`."""
        return events_to_messages(self.events())

    def clear(self) -> bool:
        """Delete this session's log."""
        with self._lock:
            self._last_t = None
            return self.store.delete_stream(self.stream)

    # -- retrieval -----------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 5,
        now: float | None = None,
        as_of: float | str | datetime | None = None,
    ) -> list[SearchHit]:
        """Past events relevant to `query`; see the module docstring for the scoring.

        `as_of`: search only the events recorded up to that time, with recency measured then
        (what the log knew at `as_of`); `now` still wins for recency when given."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if not is_int(k) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        end = None if as_of is None else parse_timestamp(as_of)
        events = [e for e in self.events(end=end) if e.get("kind") != "llm_start"]
        events = events[-self.max_search_events :]
        if not events:
            return []
        if now is None:
            now = self.clock.now() if end is None else end
        current = float(now)
        current = max(current, float(events[-1]["t"]))
        texts = [event_text(e) for e in events]
        relevance = self._similarity(query, texts)
        ages = np.array([current - float(e["t"]) for e in events])
        recency = np.power(0.5, ages / self.half_life_s)
        score = relevance + self.recency_weight * recency
        order = [i for i in np.argsort(-score, kind="stable") if relevance[i] > 0][:k]
        chosen: dict[int, SearchHit] = {}
        for i in order:
            chosen[int(i)] = SearchHit(
                events[i], float(score[i]), float(relevance[i]), float(recency[i]), "similarity"
            )
        for i in order:
            for j in range(i - self.contiguity, i + self.contiguity + 1):
                if 0 <= j < len(events) and j not in chosen:
                    chosen[j] = SearchHit(
                        events[j],
                        self.contiguity_decay * float(score[i]),
                        float(relevance[j]),
                        float(recency[j]),
                        "contiguity",
                    )
        return sorted(chosen.values(), key=lambda h: (-h.score, h.event["_id"]))

    def _similarity(self, query: str, texts: Sequence[str]) -> np.ndarray:
        embedder = self._embedder()
        if embedder is None:
            return lexical_similarity(query, texts)
        vectors = np.asarray(embedder.embed([query, *texts]), dtype=np.float64)
        return np.clip(vectors[1:] @ vectors[0], 0.0, 1.0)

    def _embedder(self) -> Embedder | None:
        if self.embedder == "lexical":
            return None
        if self.embedder is not None:
            return self.embedder
        with _AUTO_LOCK:
            if not _AUTO_EMBEDDER:
                from memory.temporal.embedding import load_minilm

                _AUTO_EMBEDDER.append(load_minilm())
            return _AUTO_EMBEDDER[0]


def lexical_similarity(query: str, texts: Sequence[str]) -> np.ndarray:
    """Cosine of the sets of content words (common words removed), in [0, 1]."""
    q = set(words(query)) - COMMON_WORDS
    out = np.zeros(len(texts))
    if not q:
        return out
    for i, text in enumerate(texts):
        w = set(words(text)) - COMMON_WORDS
        if w:
            out[i] = len(q & w) / math.sqrt(len(q) * len(w))
    return out


def event_text(event: Mapping[str, Any]) -> str:
    """The searchable text of an event."""
    kind = event.get("kind")
    if kind == "message":
        message = event.get("message") or {}
        parts = [content_text(message.get("content"))]
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append(f"{function.get('name', '')} {function.get('arguments', '')}")
        return " ".join(p for p in parts if p)
    if kind == "tool_call":
        return f"{event.get('name', '')} {event.get('arguments', '')}"
    if kind == "tool_result":
        return f"{event.get('name', '')} {event.get('content', '')}".strip()
    return ""


def events_to_messages(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages with ISO `time` from log events.

    A `tool_call` event becomes an assistant message with one tool call, unless a recorded
    assistant message already carried that call id. A result whose call was never recorded gets
    a synthetic call just before it when its tool name is known, and is dropped otherwise (the
    advisor rejects results that match no call). Results served from a cache (`cached`) are
    left out together with their calls.
    """
    out: list[dict[str, Any]] = []
    known_calls: dict[str, str] = {}
    cached_calls = {
        str(e.get("call_id")) for e in events if e.get("kind") == "tool_result" and e.get("cached")
    }
    for event in events:
        if event.get("kind") in ("tool_call", "tool_result") and (
            str(event.get("call_id")) in cached_calls
        ):
            continue
        kind, when = event.get("kind"), iso(float(event["t"]))
        if kind == "message":
            message = dict(event.get("message") or {})
            for call in message.get("tool_calls") or ():
                known_calls[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
            if message.get("role") == "tool" and str(message.get("tool_call_id")) not in (
                known_calls
            ):
                if not message.get("name"):
                    continue
                out.append(_call_message(message["name"], "{}", str(message["tool_call_id"]), when))
                known_calls[str(message["tool_call_id"])] = message["name"]
            message.setdefault("content", None)
            out.append({**message, "time": when})
        elif kind == "tool_call":
            call_id = str(event["call_id"])
            if call_id in known_calls:
                continue
            known_calls[call_id] = str(event["name"])
            out.append(_call_message(str(event["name"]), str(event["arguments"]), call_id, when))
        elif kind == "tool_result":
            call_id = str(event["call_id"])
            name = event.get("name") or known_calls.get(call_id)
            if call_id not in known_calls:
                if not name:
                    continue
                out.append(_call_message(str(name), "{}", call_id, when))
                known_calls[call_id] = str(name)
            message = {"role": "tool", "tool_call_id": call_id, "content": event.get("content")}
            if name:
                message["name"] = name
            out.append({**message, "time": when})
    return out


def _call_message(name: str, arguments: str, call_id: str, when: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ],
        "time": when,
    }


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 256:
        raise ValueError(f"tool name must be a non-empty string of <= 256 chars, got {name!r}")
