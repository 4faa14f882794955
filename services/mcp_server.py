"""`tempomem mcp serve`: the agent event log and the tool-call advisor as MCP tools.

Tools (each with a JSON schema for its arguments and a structured result):

- `record_event`: a message, tool call or tool result of a session, with its time (now if
  none is given); `AgentEventLog.record_*`.
- `search_memory`: past events relevant to a query (`AgentEventLog.search`), optionally only
  those recorded up to `as_of`.
- `time_since`: how long ago things happened in a session, as lines an agent can read
  ("3 minutes since the last get_weather result") and as numbers.
- `advise_tool_call`: messages (else the session's log) and tool specs -> the advisor's
  `Decision`: call the tool, or answer from the result the agent already has.
- `now`: the server's time.
- `tempomem_advance_clock` (only with `--clock sim`): moves the simulated clock.

Where events live: one stream per (namespace, session) in the store: in-process by default
(`LocalStore`, lost when the server exits), or Redis (`--redis URL`). The namespace is fixed
on stdio (`--namespace`); over HTTP it comes from the request, by the HTTP service's rule
(`services.http_auth.Tenancy`: a bearer token names its namespace; without tokens configured
the `X-Tempomem-Namespace` header, default "default"). A request without a valid token is
refused (401) before it reaches MCP. Bad arguments give a tool error naming the problem
(`isError`), a store that is down gives one that says so; neither stops the server.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import HTTPException
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from kv_store import StoreUnavailable
from memory.clock import Clock, parse_timestamp
from memory.temporal import ToolCallAdvisor, elapsed_line
from memory.temporal.signals import describe_signals, elapsed_signals
from services.agent_log import AgentEventLog, check_session_id, event_text, iso
from services.hooks._core import now_for
from services.http_auth import DEFAULT_NAMESPACE, Tenancy
from services.mcp_clock import (
    ADVANCE_TOOL_DESCRIPTION,
    ADVANCE_TOOL_NAME,
    advance,
    reading,
)
from services.mcp_stdio import serve_stdio
from services.session import StoreSpec, TenantStores

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVER_NAME = "tempomem-memory"
DEFAULT_SESSION = "default"
MAX_OPEN_LOGS = 4096
MAX_SEARCH_LIMIT = 100
INSTRUCTIONS = (
    "Memory with a sense of time. record_event every message, tool call and tool result "
    "(with its time); time_since tells how long ago things happened; advise_tool_call says "
    "whether a tool result you already have is still fresh enough to answer from; "
    "search_memory finds past events."
)
Session = Annotated[
    str,
    Field(
        description="Session id: 1-128 letters, digits, '_', '.', '-'.",
        min_length=1,
        max_length=128,
    ),
]
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
APPENDS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


class RecordedEvent(BaseModel):
    session: str
    event_id: str
    kind: str
    time: str = Field(description="When the event happened (ISO-8601, UTC).")
    call_id: str | None = Field(default=None, description="The tool call's id (tool_call).")


class MemoryHit(BaseModel):
    time: str
    age_s: float = Field(description="Seconds from the event to now (or to as_of).")
    kind: str
    text: str
    score: float
    relevance: float
    via: Literal["similarity", "contiguity"]


class SearchResult(BaseModel):
    session: str
    as_of: str | None
    hits: list[MemoryHit]


class ToolElapsed(BaseModel):
    name: str
    since_last_call_s: float | None
    since_last_result_s: float | None


class TimeSince(BaseModel):
    session: str
    now: str
    line: str = Field(description="One line for a model's instructions.")
    lines: list[str] = Field(description="One line per fact, e.g. '3 minutes since ...'.")
    since_last_user_s: float | None
    tools: list[ToolElapsed]


class Advice(BaseModel):
    call_tool: bool = Field(description="True: call the tool; False: answer directly.")
    tool: str | None
    age_s: float | None = Field(description="Age of the cached result the advice is about.")
    horizon_s: float | None = Field(description="How long that tool's results stay fresh.")
    coverage: bool | None
    reason: str
    reason_code: str
    volatility: str | None
    horizon_source: str | None
    tool_kind: str | None
    signals: list[str]


class ClockReading(BaseModel):
    time: str
    t: float = Field(description="Seconds since the Unix epoch.")
    clock: Literal["system", "sim"]


class EventLogs:
    """The event log of each (namespace, session) over one store spec (bounded, LRU)."""

    def __init__(
        self,
        store: StoreSpec,
        clock: Clock,
        search: Literal["auto", "lexical"] = "auto",
        max_open: int = MAX_OPEN_LOGS,
    ) -> None:
        self.stores = TenantStores(store)
        self.clock = clock
        self.embedder: Literal["lexical"] | None = "lexical" if search == "lexical" else None
        self.max_open = max_open
        self._logs: OrderedDict[tuple[str, str], AgentEventLog] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, namespace: str, session: str) -> AgentEventLog:
        check_session_id(session)
        key = (namespace, session)
        with self._lock:
            found = self._logs.get(key)
            if found is None:
                store = self.stores.get(namespace)
                found = AgentEventLog(store, session, clock=self.clock, embedder=self.embedder)
                self._logs[key] = found
                if len(self._logs) > self.max_open:
                    self._logs.popitem(last=False)
            self._logs.move_to_end(key)
            return found


def _tool_errors(fn: Callable[[], T]) -> T:
    """Run a tool body: bad input and a store that is down become tool errors (`isError`)."""
    try:
        return fn()
    except StoreUnavailable as err:
        raise ToolError(f"the store is unavailable, nothing was read or written: {err}") from None
    except (ValueError, TypeError) as err:
        raise ToolError(str(err)) from None


def namespace_rule(
    tokens: Mapping[str, str] | None, fixed: str = DEFAULT_NAMESPACE
) -> Callable[[Context], str]:
    """The namespace of a request: `fixed` on stdio, else the HTTP service's rule."""
    tenancy = Tenancy(tokens or {})

    def namespace_of(ctx: Context) -> str:
        request = ctx.request_context.request
        if request is None:
            return fixed
        try:
            return tenancy(request)
        except HTTPException as err:
            raise ToolError(str(err.detail)) from None

    return namespace_of


def build_memory_server(
    logs: EventLogs, namespace_of: Callable[[Context], str], sim_tool: bool = False
) -> MCPServer:
    """The MCP server with the memory tools over `logs` (see the module docstring)."""
    server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")
    advisor = ToolCallAdvisor(clock=logs.clock)
    advisor_lock = threading.Lock()

    @server.tool(annotations=APPENDS)
    def record_event(
        ctx: Context,
        kind: Annotated[
            Literal["message", "tool_call", "tool_result"],
            Field(description="What happened."),
        ],
        role: Annotated[
            Literal["system", "user", "assistant", "tool", "developer"] | None,
            Field(description="Message role (kind 'message')."),
        ] = None,
        content: Annotated[
            str | dict[str, Any] | list[Any] | None,
            Field(description="Message text, or the tool result (text or JSON)."),
        ] = None,
        name: Annotated[
            str | None, Field(description="Tool name (tool_call, tool_result).")
        ] = None,
        arguments: Annotated[
            dict[str, Any] | None, Field(description="Tool call arguments (tool_call).")
        ] = None,
        call_id: Annotated[
            str | None,
            Field(
                description="Tool call id: made up for a tool_call without one; required "
                "for a tool_result and for a message of role 'tool'."
            ),
        ] = None,
        time: Annotated[
            str | float | None,
            Field(
                description="When it happened: ISO-8601 with a timezone, or epoch seconds. "
                "Default: now. Times of a session may not go backwards."
            ),
        ] = None,
        session: Session = DEFAULT_SESSION,
    ) -> RecordedEvent:
        """Record a message, tool call or tool result of an agent session, with its time."""

        def body() -> RecordedEvent:
            event_log = logs.get(namespace_of(ctx), session)
            made_id: str | None = None
            if kind == "message":
                if role is None:
                    raise ValueError("kind 'message' needs a role")
                message: dict[str, Any] = {"role": role, "content": content}
                if name is not None:
                    message["name"] = name
                if call_id is not None:
                    message["tool_call_id"] = call_id
                event_log.record_message(message, t=time)
            elif kind == "tool_call":
                if name is None:
                    raise ValueError("kind 'tool_call' needs the tool's name")
                made_id = event_log.record_tool_call(name, arguments, call_id, t=time)
            else:
                if call_id is None:
                    raise ValueError("kind 'tool_result' needs the call_id of its tool_call")
                event_log.record_tool_result(call_id, content, name, t=time)
            when = event_log.last_time
            assert when is not None
            recorded = event_log.events(start=when)[-1]  # the events at that time only
            return RecordedEvent(
                session=session,
                event_id=str(recorded["_id"]),
                kind=kind,
                time=iso(when),
                call_id=made_id or call_id,
            )

        return _tool_errors(body)

    @server.tool(annotations=READ_ONLY)
    def search_memory(
        ctx: Context,
        query: Annotated[str, Field(description="What to look for.", min_length=1)],
        as_of: Annotated[
            str | float | None,
            Field(description="Only events recorded up to this time (ISO-8601 or epoch s)."),
        ] = None,
        limit: Annotated[
            int, Field(description="Most similarity hits.", ge=1, le=MAX_SEARCH_LIMIT)
        ] = 5,
        session: Session = DEFAULT_SESSION,
    ) -> SearchResult:
        """Past events of a session relevant to a query, best first, each with its age."""

        def body() -> SearchResult:
            event_log = logs.get(namespace_of(ctx), session)
            hits = event_log.search(query, k=limit, as_of=as_of)
            now = logs.clock.now() if as_of is None else parse_timestamp(as_of)
            return SearchResult(
                session=session,
                as_of=None if as_of is None else iso(now),
                hits=[
                    MemoryHit(
                        time=iso(float(hit.event["t"])),
                        age_s=max(0.0, now - float(hit.event["t"])),
                        kind=str(hit.event.get("kind")),
                        text=event_text(hit.event),
                        score=hit.score,
                        relevance=hit.relevance,
                        via=hit.via,
                    )
                    for hit in hits
                ],
            )

        return _tool_errors(body)

    @server.tool(annotations=READ_ONLY)
    def time_since(ctx: Context, session: Session = DEFAULT_SESSION) -> TimeSince:
        """How long ago things happened in a session: since the last user message and since
        each tool's last call and result, as lines an agent can read and as seconds."""

        def body() -> TimeSince:
            event_log = logs.get(namespace_of(ctx), session)
            messages = event_log.messages()
            signals = elapsed_signals(messages, now=now_for(event_log, messages))
            return TimeSince(
                session=session,
                now=iso(signals.now),
                line=elapsed_line(signals),
                lines=describe_signals(signals),
                since_last_user_s=signals.since_last_user_s,
                tools=[
                    ToolElapsed(
                        name=name,
                        since_last_call_s=timing.since_last_call_s,
                        since_last_result_s=timing.since_last_result_s,
                    )
                    for name, timing in sorted(signals.tools.items())
                ],
            )

        return _tool_errors(body)

    @server.tool(annotations=READ_ONLY)
    def advise_tool_call(
        ctx: Context,
        tools: Annotated[
            list[dict[str, Any]],
            Field(
                description="Tool specs: MCP tools (name, description, inputSchema, "
                "annotations) or OpenAI function specs; 'x-horizon-s' declares a horizon."
            ),
        ],
        messages: Annotated[
            list[dict[str, Any]] | None,
            Field(
                description="OpenAI chat messages, each with an ISO-8601 'time'; default: "
                "the session's recorded events."
            ),
        ] = None,
        now: Annotated[
            str | float | None, Field(description="Decide as of this time (default: now).")
        ] = None,
        session: Session = DEFAULT_SESSION,
    ) -> Advice:
        """Should the agent call a tool for the user's last request, or answer from the result
        it already has? Decided from elapsed time, freshness horizons and coverage."""

        def body() -> Advice:
            event_log = logs.get(namespace_of(ctx), session)
            chat = event_log.messages() if messages is None else messages
            when = now if now is not None else now_for(event_log, chat) if chat else None
            with advisor_lock:
                decision = advisor.decide(chat, tools, now=when)
            return Advice.model_validate(asdict(decision))

        return _tool_errors(body)

    @server.tool(name="now", annotations=READ_ONLY)
    def now_tool() -> ClockReading:
        """The current time of this server (ISO-8601 UTC and epoch seconds)."""
        return ClockReading(**reading(logs.clock))

    if sim_tool:

        @server.tool(
            name=ADVANCE_TOOL_NAME, description=ADVANCE_TOOL_DESCRIPTION, annotations=APPENDS
        )
        def advance_clock(
            seconds: Annotated[float, Field(ge=0, description="How far to move the clock.")],
        ) -> ClockReading:
            return ClockReading(**_tool_errors(lambda: advance(logs.clock, seconds)))

    return server


class BearerGate:
    """ASGI middleware: an HTTP request the namespace rule refuses (no or a wrong bearer
    token, a token of another namespace, a bad namespace header) is answered here with its
    status (401, 403, 422) and never reaches MCP."""

    def __init__(self, app: Any, tokens: Mapping[str, str]) -> None:
        self.app = app
        self.tenancy = Tenancy(tokens)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from starlette.requests import Request
            from starlette.responses import JSONResponse

            try:
                self.tenancy(Request(scope))
            except HTTPException as err:
                response = JSONResponse(
                    {"error": err.detail}, status_code=err.status_code, headers=err.headers
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve_memory(
    server: MCPServer, address: tuple[str, int] | None, tokens: Mapping[str, str]
) -> None:  # pragma: no cover - runs until stopped
    """Run on stdio (`address` None) or as streamable HTTP at http://HOST:PORT/mcp."""
    if address is None:
        # The SDK's own stdio runner drops malformed lines unanswered; serve_stdio answers them.
        anyio.run(serve_stdio, server._lowlevel_server)
        return
    import uvicorn

    host, port = address
    app = BearerGate(server.streamable_http_app(host=host), tokens)
    uvicorn.run(app, host=host, port=port, log_level="warning")
