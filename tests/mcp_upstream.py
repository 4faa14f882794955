"""A small upstream MCP server for the proxy tests and the benchmark (run as a script, stdio).

Every result says how many times the upstream ran that tool (`calls`), so a test can tell a
result served from the proxy's cache (the count does not move) from a fresh one.

Tools: `get_count` and `peek_count` (read-only counters), `get_report` (read-only, takes
`delay_s`), `reset_counts` (destructive), `get_flaky` (read-only, fails until it has failed
`FAILS` times), `get_forecast` (read-only, declares `ttl: 5` in its result), `describe_item`
(no annotations: a lookup by its name), `crash` (the process exits) and `hang` (sleeps, by
default for an hour).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel

READ_ONLY = ToolAnnotations(read_only_hint=True)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True)
FAILS = 1

server = MCPServer("tempomem-test-upstream", log_level="WARNING")
calls: Counter[str] = Counter()


class Count(BaseModel):
    name: str
    calls: int


@server.tool(annotations=READ_ONLY)
def get_count(name: str = "a") -> Count:
    """Returns how many times the counter tools ran."""
    calls["get_count"] += 1
    return Count(name=name, calls=calls["get_count"])


@server.tool(annotations=READ_ONLY)
def peek_count(name: str = "a") -> Count:
    """Returns the counter without counting the caller."""
    calls["peek_count"] += 1
    return Count(name=name, calls=calls["peek_count"])


@server.tool(annotations=READ_ONLY)
def get_report(delay_s: float = 0.01) -> Count:
    """Returns a report that takes `delay_s` seconds to compute."""
    time.sleep(delay_s)
    calls["get_report"] += 1
    return Count(name="report", calls=calls["get_report"])


@server.tool(annotations=DESTRUCTIVE)
def reset_counts() -> Count:
    """Resets every counter to zero."""
    calls["reset_counts"] += 1
    return Count(name="all", calls=calls["reset_counts"])


@server.tool(annotations=READ_ONLY)
def get_flaky() -> Count:
    """Returns the counter once the backend is up (it is down at first)."""
    calls["get_flaky"] += 1
    if calls["get_flaky"] <= FAILS:
        raise ToolError("service unavailable, try again later")
    return Count(name="flaky", calls=calls["get_flaky"])


@server.tool(annotations=READ_ONLY)
def get_forecast(city: str) -> dict[str, object]:
    """Returns the weather forecast for a city."""
    calls["get_forecast"] += 1
    return {"city": city, "sky": "clear", "ttl": 5, "calls": calls["get_forecast"]}


@server.tool()
def describe_item(item: str) -> str:
    """Describes a catalogue item."""
    calls["describe_item"] += 1
    return f"{item}: a catalogue item (call {calls['describe_item']})"


@server.tool()
def crash() -> str:
    """Exits the server process at once."""
    sys.stderr.flush()
    os._exit(3)


@server.tool()
def hang(seconds: float = 3600.0) -> str:
    """Never answers (sleeps)."""
    time.sleep(seconds)
    return "woke up"


if __name__ == "__main__":
    server.run()
