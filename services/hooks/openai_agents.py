"""Hooks for the OpenAI Agents SDK (`openai-agents`): record, inject, short-circuit.

    hook = AgentsTempoHook(AgentEventLog(store, "session-42"))
    agent = Agent(name="a", tools=[hook.wrap_tool(get_weather)], model=...)
    result = await Runner.run(agent, "Weather in Paris?", hooks=hook.hooks,
                              run_config=RunConfig(call_model_input_filter=hook.input_filter))

- `hook.hooks` (a `RunHooks`) records LLM starts, the newest user message of the input, tool
  starts (calls) and tool ends (results) and the model's final text into the `AgentEventLog`.
- `hook.input_filter` (for `RunConfig.call_model_input_filter`) appends to the instructions one
  line of current time, elapsed times (`memory.temporal.inject_time` / `describe_signals`) and
  the advisor's call-or-answer advice.
- `hook.wrap_tool(tool)` returns a copy of a `FunctionTool` that answers from the last recorded
  result when the advisor says it is still fresh and the call's arguments equal the cached
  call's. A cached answer is logged with `cached=True` and kept out of `messages()`, so ages
  stay those of the real result.

`AgentsTempoHook(..., learn=True)`: the advisor learns each tool's change rate from re-calls and
keeps it in the store for the namespace's next sessions (`services.learned_rates`).

If the store is unavailable (`StoreUnavailable`) the hooks skip recording, the filter leaves the
input unchanged and the wrapper calls the tool: the agent degrades to running without memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from agents import Agent, FunctionTool, RunHooks
from agents.items import ModelResponse, TResponseInputItem
from agents.run_config import CallModelData, ModelInputData
from agents.run_context import AgentHookContext, RunContextWrapper
from agents.tool import Tool
from agents.tool_context import ToolContext

from kv_store import StoreUnavailable
from memory.temporal import Decision
from services.hooks import _core

log = logging.getLogger(__name__)


def tool_spec(tool: Tool) -> dict[str, Any] | None:
    """The OpenAI function spec of a `FunctionTool` (None for other tool kinds)."""
    if not isinstance(tool, FunctionTool):
        return None
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.params_json_schema,
        },
    }


def _item_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
        )
    return ""


class AgentsTempoHook(_core.HookCore):
    """Shared state of the run hooks, the model-input filter and the tool wrapper.

    `AgentsTempoHook(event_log, advisor=None, tools=None, *, learn=False)` (see `HookCore`)."""

    def _init_hook(self) -> None:
        self.tools = self.tool_specs
        self.hooks = _RecordingHooks(self)
        self._last_user: tuple[int, str] | None = None
        self._cached_calls: set[str] = set()
        self._in_run = False

    # -- recording -----------------------------------------------------------------------------
    def record_new_user_message(self, items: Sequence[TResponseInputItem] | str) -> None:
        """Record the newest user message of the model input unless already recorded.

        Identified by its position in the input and its text, per run (`on_agent_start` of a
        new run forgets it): within a run the input only grows, so the same message is seen at
        the same position by every model call of that run."""
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        for index in range(len(items) - 1, -1, -1):
            item = items[index]
            if isinstance(item, Mapping) and item.get("role") == "user":
                key = (index, _item_text(item.get("content")))
                if key != self._last_user:
                    self.log.record_message({"role": "user", "content": key[1]})
                    self._last_user = key
                return

    # -- advice --------------------------------------------------------------------------------
    def _tools_for(self, agent: Agent[Any] | None) -> list[dict[str, Any]] | None:
        if self.tools is not None:
            return self.tools
        if agent is None:
            return None
        specs = [tool_spec(t) for t in agent.tools]
        return [s for s in specs if s is not None]

    def advice(self, agent: Agent[Any] | None = None) -> tuple[list[dict[str, Any]], Decision]:
        """The logged messages and the advisor's decision for the newest user message."""
        messages = self.log.messages()
        decision = self.advisor.decide(
            messages, self._tools_for(agent), now=_core.now_for(self.log, messages)
        )
        self.save_rates()
        return messages, decision

    def time_line(self, agent: Agent[Any] | None = None) -> str | None:
        """'Current time: ... Elapsed: ... Advice: ...' for the logged conversation, or None
        when there is no user message yet."""
        return self.logged_time_line(self._tools_for(agent))

    # -- the model-input filter ----------------------------------------------------------------
    def input_filter(self, data: CallModelData[Any]) -> ModelInputData:
        """`RunConfig.call_model_input_filter`: append the time line to the instructions."""
        model_data = data.model_data
        try:
            self.record_new_user_message(model_data.input)
            line = self.time_line(data.agent)
        except StoreUnavailable as err:
            log.warning("tempomem: no time injection, store unavailable: %s", err)
            return model_data
        if line is None:
            return model_data
        instructions = f"{model_data.instructions}\n\n{line}" if model_data.instructions else line
        return ModelInputData(input=list(model_data.input), instructions=instructions)

    # -- the tool wrapper ----------------------------------------------------------------------
    def wrap_tool(self, tool: FunctionTool) -> FunctionTool:
        """A copy of `tool` that answers from the cache while the advisor says it is fresh."""
        if not isinstance(tool, FunctionTool):
            raise TypeError(f"wrap_tool needs a FunctionTool, got {type(tool).__name__}")
        invoke = tool.on_invoke_tool
        spec = tool_spec(tool)

        async def on_invoke_tool(ctx: ToolContext[Any], arguments: str) -> Any:
            cached = _core.safe("cache lookup", self.cached_result, tool.name, arguments, spec)
            if cached is not None:
                self._cached_calls.add(ctx.tool_call_id)
                self.short_circuits += 1
                return cached
            return await invoke(ctx, arguments)

        return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)

    def cached_result(
        self, name: str, arguments: str, spec: Mapping[str, Any] | None = None
    ) -> str | None:
        """The last result of `name` if the advisor says answer-from-cache for the newest user
        message and the cached call had the same arguments; else None."""
        try:
            wanted = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return None
        if not isinstance(wanted, dict):  # never equal to a cached call's arguments
            return None
        tools = [spec] if spec is not None else self.tools
        return self.logged_cached_result(name, wanted, tools)

    def is_cached(self, call_id: str) -> bool:
        return call_id in self._cached_calls


class _RecordingHooks(RunHooks[Any]):
    """`RunHooks` that write LLM starts, tool calls and results into the event log."""

    def __init__(self, owner: AgentsTempoHook) -> None:
        self.owner = owner

    async def on_agent_start(self, context: AgentHookContext[Any], agent: Agent[Any]) -> None:
        if not self.owner._in_run:  # a new run (a handoff starts an agent inside the run)
            self.owner._in_run = True
            self.owner._last_user = None

    async def on_agent_end(
        self, context: AgentHookContext[Any], agent: Agent[Any], output: Any
    ) -> None:
        self.owner._in_run = False

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        owner = self.owner
        _core.safe("user message", owner.record_new_user_message, input_items)
        model = agent.model if isinstance(agent.model, str) else type(agent.model).__name__
        _core.safe("llm start", owner.log.record_llm_start, model)

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        for item in response.output:
            if (
                getattr(item, "type", None) == "message"
                and getattr(item, "role", "") == "assistant"
            ):
                text = " ".join(
                    getattr(part, "text", "") for part in getattr(item, "content", [])
                ).strip()
                if text:
                    _core.safe(
                        "assistant message",
                        self.owner.log.record_message,
                        {"role": "assistant", "content": text},
                    )

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        if isinstance(context, ToolContext):
            _core.safe(
                "tool call",
                self.owner.log.record_tool_call,
                context.tool_name,
                context.tool_arguments or "{}",
                call_id=context.tool_call_id,
            )

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        if isinstance(context, ToolContext):
            _core.safe(
                "tool result",
                self.owner.log.record_tool_result,
                context.tool_call_id,
                result,
                name=context.tool_name,
                cached=self.owner.is_cached(context.tool_call_id),
            )
