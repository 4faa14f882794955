"""LangChain hooks, offline: a fake chat model drives `create_agent` with a real tool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain.agents")

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool

from kv_store import LocalStore, RedisStore
from kv_store.base import BaseStore
from memory.clock import SimClock
from services.agent_log import AgentEventLog
from services.hooks.langchain import TempoCallbackHandler, TempoMiddleware

T0 = 1_741_075_200.0


class ToolCallingFake(GenericFakeChatModel):
    """Calls get_weather(Paris) unless the last message is a tool result; then answers.
    Keeps the system prompt of every call for the test to inspect."""

    seen: ClassVar[list[list[BaseMessage]]] = []  # reset per test by _fake_model

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        type(self).seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def _replies() -> Iterator[AIMessage]:
    n = 0
    while True:
        n += 1
        yield AIMessage(
            content="",
            tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": f"call_{n}"}],
        )
        yield AIMessage(content="It is sunny and 18 C in Paris.")


def _fake_model() -> ToolCallingFake:
    ToolCallingFake.seen = []
    return ToolCallingFake(messages=_replies())


def _weather_tool(clock: SimClock, invoked: list[str]) -> Any:
    @tool
    def get_weather(city: str) -> str:
        """Current weather (temperature, sky) for a city."""
        invoked.append(city)
        clock.advance(1)
        return f"18 C and sunny in {city}"

    return get_weather


def test_middleware_records_injects_short_circuits(store: BaseStore) -> None:
    clock = SimClock(T0)
    invoked: list[str] = []
    middleware = TempoMiddleware(AgentEventLog(store, "lc-sess", clock=clock))
    model = _fake_model()
    agent = create_agent(
        model,
        tools=[_weather_tool(clock, invoked)],
        system_prompt="You answer weather questions.",
        middleware=[middleware],
    )
    question = {"role": "user", "content": "What's the weather in Paris?"}
    out = agent.invoke({"messages": [question]})
    assert "sunny" in out["messages"][-1].content and invoked == ["Paris"]
    roles = [m["role"] for m in middleware.log.messages()]
    assert roles == ["user", "assistant", "tool", "assistant"]
    first_system = model.seen[0][0]
    assert first_system.type == "system"
    assert "You answer weather questions." in first_system.content
    assert "Current time: 2025-03-04" in first_system.content
    assert "Advice: call get_weather" in first_system.content
    assert "since the last get_weather result" in model.seen[1][0].content
    # the injection does not pile up in the graph state
    assert not any(m.type == "system" for m in out["messages"])

    clock.advance(60)  # a minute later, same question in the same thread: answered from cache
    out = agent.invoke({"messages": [*out["messages"], question]})
    assert invoked == ["Paris"] and middleware.short_circuits == 1
    assert "sunny" in out["messages"][-1].content
    assert "answer directly" in model.seen[2][0].content
    assert len([e for e in middleware.log.events() if e.get("cached")]) == 1
    assert [m["role"] for m in middleware.log.messages()].count("tool") == 1

    clock.advance(3 * 86400)  # stale: the tool runs again
    agent.invoke({"messages": [*out["messages"], question]})
    assert invoked == ["Paris", "Paris"] and middleware.short_circuits == 1
    assert [m["role"] for m in middleware.log.messages()].count("user") == 3


def test_callback_handler_records_events() -> None:
    clock = SimClock(T0)
    invoked: list[str] = []
    handler = TempoCallbackHandler(AgentEventLog(LocalStore(), "lc-cb", clock=clock))
    agent = create_agent(_fake_model(), tools=[_weather_tool(clock, invoked)])
    agent.invoke(
        {"messages": [{"role": "user", "content": "Weather in Paris?"}]},
        config={"callbacks": [handler]},
    )
    kinds = [e["kind"] for e in handler.log.events()]
    assert kinds == ["message", "llm_start", "tool_call", "tool_result", "llm_start", "message"]
    messages = handler.log.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[2]["tool_call_id"] == "call_1" and "sunny" in messages[2]["content"]


def test_store_unavailable_degrades(private_redis: Any) -> None:
    store = RedisStore(private_redis.url, namespace="lc-down", socket_timeout_s=0.5)
    clock = SimClock(T0)
    invoked: list[str] = []
    middleware = TempoMiddleware(AgentEventLog(store, "s", clock=clock))
    model = _fake_model()
    agent = create_agent(
        model, tools=[_weather_tool(clock, invoked)], middleware=[middleware], system_prompt="Hi."
    )
    private_redis.stop()
    out = agent.invoke({"messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert "sunny" in out["messages"][-1].content and invoked == ["Paris"]
    assert model.seen[0][0].content == "Hi."
    store.close()
