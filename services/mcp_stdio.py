"""Serving an MCP server on stdio so that a malformed line gets an answer.

The SDK's stdio transport drops a line that is not a JSON-RPC message (it logs it at debug
level), so a client that sent one waits for nothing. JSON-RPC 2.0 asks for an error with
`"id": null`: -32700 (parse error) for text that is not JSON, -32600 (invalid request) for
JSON that is not a JSON-RPC message. `serve_stdio` runs a lowlevel server that way.
"""

from __future__ import annotations

from typing import Any

from anyio.abc import ObjectReceiveStream
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError


def error_for(problem: Exception) -> JSONRPCError:
    """The JSON-RPC error answering a line the transport could not read as a message."""
    not_json = isinstance(problem, ValidationError) and any(
        e.get("type") == "json_invalid" for e in problem.errors()
    )
    if not_json:
        error = ErrorData(code=PARSE_ERROR, message="Parse error: the line is not JSON")
    else:
        error = ErrorData(
            code=INVALID_REQUEST, message="Invalid Request: not a JSON-RPC 2.0 message"
        )
    return JSONRPCError(jsonrpc="2.0", id=None, error=error)


class AnsweringReadStream(ObjectReceiveStream[SessionMessage]):
    """The read side of a stdio transport that answers unreadable lines (see above) and hands
    every message on unchanged. Iteration and ``async with`` come from anyio's
    ``ObjectReceiveStream`` (the end of the stream ends the iteration; leaving closes it)."""

    def __init__(self, inner: Any, write: Any) -> None:
        self._inner = inner
        self._write = write

    @property
    def last_context(self) -> Any:
        """The sender's context of the last message (the dispatcher reads it)."""
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            await self._write.send(SessionMessage(error_for(item)))

    async def aclose(self) -> None:
        await self._inner.aclose()


async def serve_stdio(server: Server[Any]) -> None:
    """Run `server` on this process's stdin/stdout until the client closes stdin."""
    async with stdio_server() as (read, write):
        await server.run(
            AnsweringReadStream(read, write), write, server.create_initialization_options()
        )
