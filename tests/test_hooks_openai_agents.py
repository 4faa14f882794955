"""The OpenAI Agents SDK hook, offline: a fake Model calls a function tool, then answers."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

agents = pytest.importorskip("agents")

from agents import Agent, ModelSettings, RunConfig, Runner, function_tool  # noqa: E402
from agents.items import ModelResponse  # noqa: E402
from agents.models.interface import Model  # noqa: E402
from agents.usage import Usage  # noqa: E402
from openai.types.responses import (  # noqa: E402
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from kv_store import LocalStore, RedisStore  # noqa: E402
from kv_store.base import BaseStore  # noqa: E402
from memory.clock import SimClock  # noqa: E402
from services.agent_log import AgentEventLog  # noqa: E402
from services.hooks.openai_agents import AgentsTempoHook  # noqa: E402

T0 = 1_741_075_200.0
os.environ.setdefault("OPENAI_API_KEY", "sk-dummy-offline")
agents.set_tracing_disabled(True)


class FakeModel(Model):
    """Calls get_weather(city=Paris) when the input has no tool output yet; then answers."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.instructions: list[str | None] = []
        self.calls = 0

    async def get_response(
        self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        self.instructions.append(system_instructions)
        self.calls += 1
        self.clock.advance(1)
        items = [input] if isinstance(input, str) else list(input)
        last: Any = items[-1]
        last_type = last.get("type") if isinstance(last, dict) else None
        if last_type != "function_call_output":
            output: list[Any] = [
                ResponseFunctionToolCall(
                    id=f"fc_{self.calls}",
                    call_id=f"call_{self.calls}",
                    name="get_weather",
                    arguments=json.dumps({"city": "Paris"}),
                    type="function_call",
                    status="completed",
                )
            ]
        else:
            output = [
                ResponseOutputMessage(
                    id=f"msg_{self.calls}",
                    role="assistant",
                    status="completed",
                    type="message",
                    content=[
                        ResponseOutputText(
                            type="output_text", text=f"Paris: {last['output']}", annotations=[]
                        )
                    ],
                )
            ]
        return ModelResponse(output=output, usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def _setup(store: BaseStore) -> tuple[AgentsTempoHook, Agent[Any], FakeModel, SimClock, list[str]]:
    clock = SimClock(T0)
    invoked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather (temperature, sky) for a city."""
        invoked.append(city)
        clock.advance(1)
        return f"18 C and sunny in {city}"

    hook = AgentsTempoHook(AgentEventLog(store, "agents-sess", clock=clock, embedder="lexical"))
    model = FakeModel(clock)
    agent = Agent(
        name="weather",
        instructions="You answer weather questions.",
        tools=[hook.wrap_tool(get_weather)],
        model=model,
        model_settings=ModelSettings(),
    )
    return hook, agent, model, clock, invoked


def _run(hook: AgentsTempoHook, agent: Agent[Any], question: str) -> Any:
    return asyncio.run(
        Runner.run(
            agent,
            question,
            hooks=hook.hooks,
            run_config=RunConfig(call_model_input_filter=hook.input_filter),
        )
    )


def test_records_injects_and_short_circuits(store: BaseStore) -> None:
    hook, agent, model, clock, invoked = _setup(store)
    result = _run(hook, agent, "What's the weather in Paris?")
    assert "sunny" in result.final_output
    assert invoked == ["Paris"]
    kinds = [e["kind"] for e in hook.log.events()]
    assert kinds == [
        "message",  # user
        "llm_start",
        "tool_call",
        "tool_result",
        "llm_start",
        "message",  # assistant answer
    ]
    roles = [m["role"] for m in hook.log.messages()]
    assert roles == ["user", "assistant", "tool", "assistant"]
    # the filter appended the time line to the instructions of every model call
    assert all(i and "Current time: 2025-03-04" in i for i in model.instructions)
    assert "You answer weather questions." in (model.instructions[0] or "")
    assert "Advice: call get_weather" in (model.instructions[0] or "")
    assert "since the last get_weather result" in (model.instructions[-1] or "")

    # a minute later the same question: the cached result is fresh, the tool is not run
    clock.advance(60)
    result = _run(hook, agent, "What's the weather in Paris?")
    assert invoked == ["Paris"] and hook.short_circuits == 1
    assert "sunny" in result.final_output
    cached = [e for e in hook.log.events() if e.get("cached")]
    assert len(cached) == 1
    tool_messages = [m for m in hook.log.messages() if m["role"] == "tool"]
    assert len(tool_messages) == 1  # the cached answer is not new information
    assert "answer directly" in (model.instructions[-2] or "")

    # three days later the result is stale: the tool runs again
    clock.advance(3 * 86400)
    _run(hook, agent, "What's the weather in Paris?")
    assert invoked == ["Paris", "Paris"] and hook.short_circuits == 1
    assert [m["role"] for m in hook.log.messages()].count("user") == 3


def test_store_unavailable_degrades(private_redis: Any) -> None:
    store = RedisStore(private_redis.url, namespace="agents-down", socket_timeout_s=0.5)
    hook, agent, model, _clock, invoked = _setup(store)
    private_redis.stop()
    result = _run(hook, agent, "What's the weather in Paris?")
    assert "sunny" in result.final_output and invoked == ["Paris"]
    assert model.instructions[0] == "You answer weather questions."
    store.close()


def test_wrap_tool_rejects_non_function_tools() -> None:
    hook = AgentsTempoHook(AgentEventLog(LocalStore(), "x"))
    with pytest.raises(TypeError):
        hook.wrap_tool("not a tool")  # type: ignore[arg-type]
