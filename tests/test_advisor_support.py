"""Builders for the advisor tests (test_advisor_*.py): tool specs and timestamped chats.

Every conversation in those tests is written here by hand, for the behaviour it checks; none is
taken from a dataset.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from memory.temporal import Decision, ToolCallAdvisor

T0 = datetime(2025, 6, 3, 9, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    """ISO-8601 time `seconds` after T0."""
    return (T0 + timedelta(seconds=seconds)).isoformat()


def tool(name: str, description: str, *params: str, **function_fields: Any) -> dict[str, Any]:
    """An OpenAI tool spec; `function_fields` (annotations, x-horizon-s, ...) go in "function"."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": {p: {"type": "string"} for p in params}},
            **function_fields,
        },
    }


def exchange(
    name: str,
    arguments: dict[str, Any],
    result: Any,
    t: float,
    call_id: str | None = None,
) -> list[dict[str, Any]]:
    """An assistant tool call at `t` and its result one second later."""
    call_id = call_id or f"call_{name}_{int(t)}"
    content = result if isinstance(result, str) else json.dumps(result)
    return [
        {
            "role": "assistant",
            "content": None,
            "time": at(t),
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": call_id,
            "name": name,
            "content": content,
            "time": at(t + 1),
        },
    ]


def conversation(
    request: str,
    name: str,
    arguments: dict[str, Any],
    result: Any,
    answer: str,
    follow_up: str,
    gap_s: float,
    proposal: str | None = None,
) -> list[dict[str, Any]]:
    """request (t=0) -> call and result (t=1, 2) -> answer (t=3) [-> proposal] -> follow-up,
    `gap_s` seconds after the result."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant.", "time": at(-1)},
        {"role": "user", "content": request, "time": at(0)},
        *exchange(name, arguments, result, 1),
        {"role": "assistant", "content": answer, "time": at(3)},
    ]
    if proposal is not None:
        messages[-1]["content"] = f"{answer} {proposal}"
    messages.append({"role": "user", "content": follow_up, "time": at(2 + gap_s)})
    return messages


#: What `ask_again` takes: a tool spec, the call's arguments, its result, the follow-up request
#: and its gap in seconds after the result.
Ask = tuple[dict[str, Any], dict[str, Any], Any, str, float]


def ask_again(
    spec: dict[str, Any], arguments: dict[str, Any], result: Any, follow_up: str, gap_s: float
) -> Decision:
    """The advisor's decision on `follow_up`, `gap_s` seconds after one call of `spec`."""
    name = spec["function"]["name"]
    messages = conversation("First ask.", name, arguments, result, "Here it is.", follow_up, gap_s)
    return ToolCallAdvisor().decide(messages, [spec])
