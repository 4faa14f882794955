"""Starting the MCP commands as real processes for the tests and the benchmark: `tempomem mcp
proxy` in front of tests/mcp_upstream.py, `tempomem mcp serve`, each driven by `mcp.Client`."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mcp import StdioServerParameters
from mcp_types import CallToolResult

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT / "tests" / "mcp_upstream.py"
TEMPOMEM = str(Path(sys.executable).with_name("tempomem"))
UPSTREAM_COMMAND = [sys.executable, str(UPSTREAM)]
FRESHNESS = "tempomem/freshness"


def tempomem(*args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    """`tempomem ARGS...` as an MCP stdio server."""
    return StdioServerParameters(command=TEMPOMEM, args=list(args), cwd=str(ROOT), env=env)


def proxy(*options: str, upstream: list[str] | None = None) -> StdioServerParameters:
    """`tempomem mcp proxy OPTIONS -- UPSTREAM` (default: the test upstream)."""
    return tempomem("mcp", "proxy", *options, "--", *(upstream or UPSTREAM_COMMAND))


def upstream() -> StdioServerParameters:
    """The test upstream itself, for calling it directly."""
    return StdioServerParameters(command=UPSTREAM_COMMAND[0], args=UPSTREAM_COMMAND[1:])


def freshness(result: CallToolResult) -> dict[str, Any]:
    """The result's `_meta["tempomem/freshness"]`."""
    assert result.meta is not None and FRESHNESS in result.meta, result
    return dict(result.meta[FRESHNESS])


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict), result
    return dict(result.structured_content)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


class RawStdio:
    """Newline-delimited JSON-RPC with a server process, below any SDK: for malformed input."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        line = message if isinstance(message, str) else json.dumps(message)
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def receive(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The next message; a test failure if none comes within `timeout_s`."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        assert ready, f"no answer within {timeout_s} s"
        line = self.process.stdout.readline()
        assert line, "the server closed its stdout"
        return dict(json.loads(line))

    def initialize(self) -> dict[str, Any]:
        self.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw-test", "version": "0"},
                },
            }
        )
        answer = self.receive(timeout_s=120.0)  # after the server (and its upstream) started
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
