"""Hooks for LangChain (`langchain-core` callbacks, `langchain>=1` agent middleware).

    middleware = TempoMiddleware(AgentEventLog(store, "session-42"))
    agent = create_agent(model, tools=[get_weather], middleware=[middleware])
    agent.invoke({"messages": [{"role": "user", "content": "Weather in Paris?"}]})

- `TempoCallbackHandler` (any chain or model, `config={"callbacks": [handler]}`) records chat
  model starts (and the newest human message), final AI texts, tool starts (calls, by
  `tool_call_id`) and tool ends (results) into the `AgentEventLog`.
- `TempoMiddleware` (for `create_agent`) records the conversation itself (use it *or* the
  handler, not both, or events are recorded twice):
  - `before_model` / `after_model`: record the state's new messages (human, AI with tool calls),
    keyed by message id (tool results by `tool_call_id`);
  - `wrap_model_call`: appends one line of current time, elapsed times and the advisor's advice
    to the system message of this call only. Injecting in `before_model` would have to write a
    message into the graph state, which then piles up in the history; the request override does
    not;
  - `wrap_tool_call`: records the call and its result as they happen; when the advisor says the
    cached result is fresh and the arguments equal the cached call's, returns that result as a
    `ToolMessage` without running the tool (logged with `cached=True`).

`TempoMiddleware(..., learn=True)`: the advisor learns each tool's change rate from re-calls and
keeps it in the store for the namespace's next sessions (`services.learned_rates`).

A `StoreUnavailable` store makes every hook a no-op (the agent runs without memory).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.outputs import LLMResult
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.runtime import Runtime

from services.agent_log import AgentEventLog
from services.hooks import _core


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content
        ).strip()
    return "" if content is None else str(content)


def _openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    specs = []
    for tool in tools:
        try:
            specs.append(convert_to_openai_tool(tool))
        except (TypeError, ValueError, NotImplementedError):
            continue
    return specs


class TempoCallbackHandler(BaseCallbackHandler):
    """Records LangChain callback events into an `AgentEventLog` (see the module docstring)."""

    raise_error = False

    def __init__(self, event_log: AgentEventLog) -> None:
        self.log = event_log
        self._seen_human: set[str] = set()
        self._tools: dict[UUID, str] = {}

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> Any:
        batch = messages[0] if messages else []
        for index in range(len(batch) - 1, -1, -1):
            message = batch[index]
            if isinstance(message, HumanMessage):
                key = message.id or f"{index}:{_text(message.content)}"
                if key not in self._seen_human:
                    self._seen_human.add(key)
                    _core.safe(
                        "user message",
                        self.log.record_message,
                        {"role": "user", "content": _text(message.content)},
                    )
                break
        name = (serialized or {}).get("name") or (kwargs.get("metadata") or {}).get("ls_model_name")
        _core.safe("llm start", self.log.record_llm_start, str(name) if name else None)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> Any:
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                if isinstance(message, AIMessage) and not message.tool_calls:
                    text = _text(message.content)
                    if text:
                        _core.safe(
                            "assistant message",
                            self.log.record_message,
                            {"role": "assistant", "content": text},
                        )

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        name = str((serialized or {}).get("name") or "tool")
        call_id = kwargs.get("tool_call_id") or f"run_{run_id.hex}"
        self._tools[run_id] = call_id
        arguments = inputs if inputs is not None else _as_arguments(input_str)
        _core.safe("tool call", self.log.record_tool_call, name, arguments, call_id=str(call_id))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> Any:
        call_id = self._tools.pop(run_id, None)
        if isinstance(output, ToolMessage):
            call_id = output.tool_call_id or call_id
            name = output.name
            content: Any = _text(output.content)
        else:
            name = kwargs.get("name")
            content = output
        if call_id is not None:
            _core.safe(
                "tool result",
                self.log.record_tool_result,
                str(call_id),
                content,
                name=str(name) if name else None,
            )

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> Any:
        call_id = self._tools.pop(run_id, None)
        if call_id is not None:
            _core.safe("tool error", self.log.record_tool_result, str(call_id), f"error: {error}")


def _as_arguments(input_str: str) -> dict[str, Any]:
    try:
        parsed = json.loads(input_str)
    except (TypeError, json.JSONDecodeError):
        return {"input": input_str}
    return parsed if isinstance(parsed, dict) else {"input": parsed}


class TempoMiddleware(_core.HookCore, AgentMiddleware):
    """`create_agent` middleware: record, inject elapsed time, answer fresh calls from cache.

    `TempoMiddleware(event_log, advisor=None, tools=None, *, learn=False)` (see `HookCore`)."""

    def _init_hook(self) -> None:
        self._seen: set[str] = set()

    # -- recording -----------------------------------------------------------------------------
    def _record_state(self, messages: Sequence[AnyMessage]) -> None:
        for index, message in enumerate(messages):
            if isinstance(message, ToolMessage):
                key = f"tool:{message.tool_call_id}"
            else:
                key = message.id or f"{index}:{type(message).__name__}:{_text(message.content)}"
            if key in self._seen:
                continue
            self._seen.add(key)
            if isinstance(message, HumanMessage):
                self.log.record_message({"role": "user", "content": _text(message.content)})
            elif isinstance(message, AIMessage):
                converted = convert_to_openai_messages([message])
                record = dict(converted[0]) if isinstance(converted, list) else dict(converted)
                record["content"] = _text(record.get("content")) or None
                for call in message.tool_calls:
                    self._seen.add(f"call:{call['id']}")
                self.log.record_message(record)
            elif isinstance(message, ToolMessage):
                self.log.record_tool_result(
                    message.tool_call_id, _text(message.content), name=message.name
                )

    def before_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Record the state's new messages; the state itself is left as it is."""
        _core.safe("state sync", self._record_state, state["messages"])
        return None

    async def abefore_model(
        self, state: AgentState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return self.before_model(state, runtime)

    # After the model call the same sync records the AI message it added.
    after_model = before_model
    aafter_model = abefore_model

    # -- injection -----------------------------------------------------------------------------
    def time_line(self, tools: Sequence[Any] | None = None) -> str | None:
        """'Current time: ... Elapsed: ... Advice: ...' for the logged conversation."""
        specs = self.tool_specs if self.tool_specs is not None else _openai_tools(tools or [])
        return self.logged_time_line(specs)

    def _inject(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        _core.safe("state sync", self._record_state, request.messages)
        line = _core.safe("time injection", self.time_line, request.tools)
        if not line:
            return request
        current = request.system_message
        text = f"{_text(current.content)}\n\n{line}" if current is not None else line
        return request.override(system_message=SystemMessage(content=text))

    def wrap_model_call(self, request: ModelRequest[Any], handler: Callable[..., Any]) -> Any:
        return handler(self._inject(request))

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[..., Awaitable[Any]]
    ) -> Any:
        return await handler(self._inject(request))

    # -- tool calls ----------------------------------------------------------------------------
    def cached_result(self, name: str, arguments: Mapping[str, Any], tool: Any) -> str | None:
        """The last result of `name` when the advisor says it is fresh for the newest request
        and the cached call had the same arguments; else None."""
        specs = (
            self.tool_specs
            if self.tool_specs is not None
            else _openai_tools([tool] if tool else [])
        )
        return self.logged_cached_result(name, arguments, specs or None)

    def _before_tool(self, request: Any) -> ToolMessage | None:
        call = request.tool_call
        name, call_id, args = call["name"], str(call["id"]), dict(call.get("args") or {})
        if f"call:{call_id}" not in self._seen:
            self._seen.add(f"call:{call_id}")
            _core.safe("tool call", self.log.record_tool_call, name, args, call_id=call_id)
        tool = request.tool if isinstance(request.tool, BaseTool) else None
        cached = _core.safe("cache lookup", self.cached_result, name, args, tool)
        if cached is None:
            return None
        self.short_circuits += 1
        self._seen.add(f"tool:{call_id}")
        _core.safe(
            "tool result", self.log.record_tool_result, call_id, cached, name=name, cached=True
        )
        return ToolMessage(content=cached, tool_call_id=call_id, name=name)

    def _after_tool(self, request: Any, result: Any) -> None:
        if isinstance(result, ToolMessage) and f"tool:{result.tool_call_id}" not in self._seen:
            self._seen.add(f"tool:{result.tool_call_id}")
            _core.safe(
                "tool result",
                self.log.record_tool_result,
                result.tool_call_id,
                _text(result.content),
                name=result.name or request.tool_call["name"],
            )

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        cached = self._before_tool(request)
        if cached is not None:
            return cached
        result = handler(request)
        self._after_tool(request, result)
        return result

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        cached = self._before_tool(request)
        if cached is not None:
            return cached
        result = await handler(request)
        self._after_tool(request, result)
        return result
