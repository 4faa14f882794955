"""Requests and responses of the agent routes (events, advice), and a ``Decision`` as JSON."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

MAX_TOOLS = 128


class AgentEventRequest(BaseModel):
    """One agent event (see ``services.agent_log.AgentEventLog``); fields by ``kind``:
    ``message`` needs ``message``; ``tool_call`` needs ``name`` (``arguments``, ``call_id``
    optional); ``tool_result`` needs ``call_id`` and ``content`` (``name``, ``cached``);
    ``llm_start`` takes ``model``. ``t``: seconds since the epoch or ISO-8601; default now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["message", "tool_call", "tool_result", "llm_start"]
    message: dict[str, JsonValue] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=128)
    arguments: dict[str, JsonValue] | str | None = None
    call_id: str | None = Field(default=None, min_length=1, max_length=128)
    content: JsonValue = None
    cached: bool = False
    model: str | None = Field(default=None, max_length=128)
    t: float | str | None = Field(default=None, description="Epoch seconds or ISO-8601.")


class AgentEventResponse(BaseModel):
    session_id: str
    id: str = Field(description="The event id (or, for tool_call, the call id).")


class AdviseRequest(BaseModel):
    """Advice on the session's last user message: call a tool, or answer directly?"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tools: list[dict[str, JsonValue]] = Field(
        default_factory=list, max_length=MAX_TOOLS, description="OpenAI function specs."
    )
    now: float | str | None = Field(default=None, description="Epoch seconds or ISO-8601.")


class AdviseResponse(BaseModel):
    session_id: str
    call_tool: bool
    tool: str | None
    age_s: float | None
    horizon_s: float | None
    coverage: bool | None = None
    reason: str
    volatility: str | None = None
    horizon_source: str | None = None


def decision_dict(decision: Any) -> dict[str, Any]:
    """A ``memory.temporal.Decision`` as JSON-safe fields of ``AdviseResponse``."""
    fields = ("call_tool", "tool", "age_s", "horizon_s", "coverage", "reason")
    out = {name: getattr(decision, name) for name in fields}
    out["volatility"] = getattr(decision, "volatility", None)
    out["horizon_source"] = getattr(decision, "horizon_source", None)
    for name in ("age_s", "horizon_s"):
        value = out[name]
        if value is not None and not math.isfinite(float(value)):
            out[name] = None
    return out
