"""`tempomem mcp proxy`: an MCP server (stdio) in front of another MCP server, the upstream,
that adds a sense of time to its tool results.

`tools/list` and `tools/call` are forwarded with names, schemas, annotations and results
unchanged, and:

- every call and its result is logged with its time in the agent event log of the proxy's
  session (`services.agent_log.AgentEventLog`, in the proxy's store and namespace);
- every result carries `_meta["tempomem/freshness"]` = {observed_at, age_s, horizon_s,
  from_cache, reason} (`services.mcp_freshness`);
- a repeated call of a read-only tool with the same arguments is answered from the cached
  result while it is within its horizon, without calling the upstream;
- with `stamp`, text results start with a line "[tempomem: observed 3 minutes ago (...)]".

The upstream is a command started over stdio (it gets the proxy's environment) or a
streamable-HTTP URL (`TEMPOMEM_UPSTREAM_TOKEN`, if set, is sent as its bearer token). Every
upstream request is bounded by `timeout_s`: an upstream that fails to start, exits, crashes
or hangs gives the client an MCP error that says so, never a hang; a cached result is still
served while the upstream is down. Other MCP features (resources, prompts) are not forwarded,
and neither are requests for client input (elicitation) from the upstream.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_PARAMS, REQUEST_TIMEOUT

from kv_store import StoreUnavailable
from kv_store.base import BaseStore
from kv_store.urls import redact_url
from memory.clock import Clock
from services.agent_log import AgentEventLog
from services.mcp_clock import (
    ADVANCE_TOOL_ANNOTATIONS,
    ADVANCE_TOOL_DESCRIPTION,
    ADVANCE_TOOL_NAME,
    ADVANCE_TOOL_SCHEMA,
    advance,
)
from services.mcp_freshness import FreshnessCache, result_text, with_freshness
from services.mcp_stdio import serve_stdio

log = logging.getLogger(__name__)

SERVER_NAME = "tempomem-proxy"
DEFAULT_TIMEOUT_S = 30.0
UPSTREAM_TOKEN_ENV = "TEMPOMEM_UPSTREAM_TOKEN"
MAX_LIST_PAGES = 100
STORE_RETRY_S = 10.0
R = TypeVar("R")


@dataclass(frozen=True)
class UpstreamSpec:
    """Where the upstream is: `command` (argv, started over stdio) or `url`."""

    command: Sequence[str] = ()
    url: str | None = None

    def __post_init__(self) -> None:
        if not self.command and self.url is None:
            raise ValueError("no upstream: give its command after '--', or --upstream-url URL")
        if self.command and self.url is not None:
            raise ValueError(
                "give the upstream as a command after '--' or as --upstream-url, not both"
            )

    def describe(self) -> str:
        """What people may see: the program's name, or the URL without its credentials."""
        return redact_url(self.url) if self.url else os.path.basename(self.command[0])

    def client(self, timeout_s: float) -> Client:
        if self.url is not None:
            return Client(
                self._http_transport(self.url), read_timeout_seconds=timeout_s, cache=None
            )
        params = StdioServerParameters(
            command=self.command[0], args=list(self.command[1:]), env=dict(os.environ)
        )
        return Client(params, read_timeout_seconds=timeout_s, cache=None)

    @staticmethod
    def _http_transport(url: str) -> Any:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        token = os.environ.get(UPSTREAM_TOKEN_ENV)
        if not token:
            return streamable_http_client(url)
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        return streamable_http_client(url, http_client=http)


class Upstream:
    """The proxy's client of the upstream: every request bounded by `timeout_s`, and every
    failure an `MCPError` that names it (see the module docstring)."""

    def __init__(self, spec: UpstreamSpec, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not timeout_s > 0:
            raise ValueError(f"the upstream timeout must be > 0 seconds, got {timeout_s!r}")
        self.spec = spec
        self.timeout_s = timeout_s
        self.client: Client | None = None
        self.down: str | None = "the upstream is not connected yet"

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[Upstream]:
        """Connect for the life of the block; a failure to connect is kept, not raised."""
        async with AsyncExitStack() as stack:
            try:
                self.client = await stack.enter_async_context(self.spec.client(self.timeout_s))
                self.down = None
            except Exception as err:
                self.down = f"the upstream MCP server {self.spec.describe()!r} did not start: "
                self.down += _error_text(err)
                log.error("tempomem proxy: %s", self.down)
            try:
                yield self
            finally:
                self.client = None

    async def list_tools(self, cursor: str | None) -> types.ListToolsResult:
        return await self._request("tools/list", lambda client: client.list_tools(cursor=cursor))

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        # The session's own request, not Client.call_tool: that one also checks structured
        # content against the output schema, which is the downstream client's to do (and costs
        # more than the rest of the proxy together).
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name=name, arguments=arguments)
        )
        return await self._request(
            f"tools/call {name}",
            lambda client: client.session.send_request(
                request, types.CallToolResult, request_read_timeout_seconds=self.timeout_s
            ),
        )

    async def _request(self, what: str, send: Callable[[Client], Awaitable[R]]) -> R:
        if self.client is None or self.down is not None:
            raise MCPError(code=INTERNAL_ERROR, message=self.down or "the upstream is gone")
        try:
            with anyio.fail_after(self.timeout_s + 1.0):  # the client's own timeout fires first
                return await send(self.client)
        except TimeoutError:
            raise self._timeout(what) from None
        except MCPError as err:
            if err.error.code == REQUEST_TIMEOUT:
                raise self._timeout(what) from None
            if err.error.code == CONNECTION_CLOSED:
                self.down = (
                    f"the upstream MCP server {self.spec.describe()!r} closed the connection "
                    "(it exited or crashed); restart the proxy"
                )
                raise MCPError(code=INTERNAL_ERROR, message=self.down) from None
            raise MCPError(
                code=err.error.code, message=f"upstream: {err.error.message}", data=err.error.data
            ) from None
        except Exception as err:  # a malformed answer, a broken pipe
            raise MCPError(
                code=INTERNAL_ERROR, message=f"upstream {what} failed: {_error_text(err)}"
            ) from None

    def _timeout(self, what: str) -> MCPError:
        return MCPError(
            code=INTERNAL_ERROR,
            message=f"the upstream did not answer {what} within {self.timeout_s:g} s",
        )


class FreshnessProxy:
    """The proxy's request handlers: forwarding, caching, logging (module docstring)."""

    def __init__(
        self,
        upstream: Upstream,
        cache: FreshnessCache,
        event_log: AgentEventLog | None,
        stamp: bool = False,
        sim_tool: bool = False,
    ) -> None:
        self.upstream = upstream
        self.cache = cache
        self.event_log = event_log
        self.stamp = stamp
        self.sim_tool = sim_tool
        self._listed: set[str] = set()
        self._store_down_until = -math.inf

    @property
    def clock(self) -> Clock:
        return self.cache.clock

    def server(self) -> Server[Any]:
        """The MCP server (lowlevel: schemas and results pass through as they are)."""

        @asynccontextmanager
        async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
            async with self.upstream.connected():
                yield {}

        return Server(
            SERVER_NAME,
            lifespan=lifespan,
            on_list_tools=self.on_list_tools,
            on_call_tool=self.on_call_tool,
        )

    async def on_list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        page = await self.upstream.list_tools(params.cursor if params else None)
        self._learn(page.tools, complete=page.next_cursor is None)
        if self.sim_tool and page.next_cursor is None:
            return page.model_copy(update={"tools": [*page.tools, _advance_tool()]})
        return page

    async def on_call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        name, arguments = params.name, dict(params.arguments or {})
        if self.sim_tool and name == ADVANCE_TOOL_NAME:
            return _advance_result(self.clock, arguments)
        if not self.cache.known(name):
            await self._relist()
        lookup = self.cache.lookup(name, arguments)
        call_id = f"call_{uuid.uuid4().hex[:16]}"
        self._log(lambda log_: log_.record_tool_call(name, arguments, call_id, t=self.clock.now()))
        if lookup.result is not None and lookup.freshness is not None:
            result, freshness = lookup.result, lookup.freshness
        else:
            try:
                answer = await self.upstream.call_tool(name, arguments)
            except MCPError as err:
                text = f"MCP error {err.error.code}: {err.error.message}"
                self._log(
                    lambda log_: log_.record_tool_result(call_id, text, name, self.clock.now())
                )
                raise
            result = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
            observed = self.clock.now()
            freshness = self.cache.record(name, arguments, result, observed, lookup.reason)
        self._log(
            lambda log_: log_.record_tool_result(
                call_id, result_text(result), name, self.clock.now(), cached=freshness.from_cache
            )
        )
        out = with_freshness(result, freshness, stamp=self.stamp)
        try:
            return types.CallToolResult.model_validate(out)
        except ValueError as err:  # pydantic's ValidationError
            raise MCPError(
                code=INTERNAL_ERROR, message=f"upstream result of {name} is malformed: {err}"
            ) from None

    def _learn(self, tools: Sequence[types.Tool], complete: bool) -> None:
        dumped = [tool.model_dump(by_alias=True, mode="json", exclude_none=True) for tool in tools]
        self.cache.learn_tools(dumped)
        self._listed.update(tool.name for tool in tools)
        if complete:
            for name in sorted(set(self.cache.horizons) - self._listed):
                log.warning("tempomem proxy: --horizon names %r, which the upstream lacks", name)

    async def _relist(self) -> None:
        """Read every page of the upstream's tools (a call came before any tools/list)."""
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            try:
                page = await self.upstream.list_tools(cursor)
            except MCPError:
                return  # the call itself will report what is wrong
            self._learn(page.tools, complete=page.next_cursor is None)
            cursor = page.next_cursor
            if cursor is None:
                return

    def _log(self, write: Callable[[AgentEventLog], object]) -> None:
        """Write to the event log; a record it refuses is a warning, and a store that is down
        pauses logging for `STORE_RETRY_S` (so that calls do not each wait on it): the proxy
        goes on without memory meanwhile."""
        if self.event_log is None or time.monotonic() < self._store_down_until:
            return
        try:
            write(self.event_log)
        except StoreUnavailable as err:
            self._store_down_until = time.monotonic() + STORE_RETRY_S
            log.warning(
                "tempomem proxy: event log paused for %g s, store unavailable: %s",
                STORE_RETRY_S,
                err,
            )
        except ValueError as err:
            log.warning("tempomem proxy: event log skipped: %s", err)


def _advance_tool() -> types.Tool:
    return types.Tool(
        name=ADVANCE_TOOL_NAME,
        description=ADVANCE_TOOL_DESCRIPTION,
        input_schema=ADVANCE_TOOL_SCHEMA,
        annotations=types.ToolAnnotations.model_validate(ADVANCE_TOOL_ANNOTATIONS),
    )


def _advance_result(clock: Clock, arguments: Mapping[str, Any]) -> types.CallToolResult:
    try:
        now = advance(clock, arguments.get("seconds"))
    except ValueError as err:
        raise MCPError(code=INVALID_PARAMS, message=str(err)) from None
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=now["time"])], structured_content=now
    )


def _error_text(err: BaseException) -> str:
    """One line for an error, the first real one of an exception group."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    if isinstance(err, MCPError):
        return err.error.message
    return f"{type(err).__name__}: {err}"


def run_proxy(
    spec: UpstreamSpec,
    cache: FreshnessCache,
    store: BaseStore | None,
    session: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    stamp: bool = False,
    sim_tool: bool = False,
) -> None:  # pragma: no cover - runs until the client closes stdin
    """Serve the proxy on stdio until the client goes away."""
    event_log = None if store is None else AgentEventLog(store, session, clock=cache.clock)
    proxy = FreshnessProxy(Upstream(spec, timeout_s), cache, event_log, stamp, sim_tool)
    anyio.run(serve_stdio, proxy.server())
