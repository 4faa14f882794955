"""`tempomem mcp proxy` as a real process in front of a real upstream MCP server
(tests/mcp_upstream.py), driven by `mcp.Client` over stdio; its event log in a real Redis.

The upstream's results count its own runs of each tool (`calls`): a result served from the
proxy's cache repeats the count, a fresh one moves it. The proxy runs on `--clock sim`; the
test tool `tempomem_advance_clock` ages the cache without waiting. Tests sharing the proxy
use arguments of their own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from kv_store import RedisStore
from kv_store.redis_server import LocalRedisServer
from memory import parse_timestamp
from services.agent_log import AgentEventLog
from tests.mcp_processes import (
    TEMPOMEM,
    UPSTREAM_COMMAND,
    RawStdio,
    free_port,
    freshness,
    proxy,
    structured,
    upstream,
)

pytestmark = pytest.mark.anyio
TIMEOUT_S = 3.0
NAMESPACE = "mcp-proxy-test"
SESSION = "agent-1"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(redis_server: LocalRedisServer) -> AsyncIterator[Client]:
    params = proxy(
        "--clock", "sim",
        "--horizon", "get_count=60",
        "--horizon", "peek_count=0",
        "--timeout", str(TIMEOUT_S),
        "--redis", redis_server.url,
        "--namespace", NAMESPACE,
        "--session", SESSION,
    )  # fmt: skip
    async with Client(params, read_timeout_seconds=60) as connected:
        yield connected


async def advance(client: Client, seconds: float) -> float:
    result = await client.call_tool("tempomem_advance_clock", {"seconds": seconds})
    return float(structured(result)["t"])


async def test_tools_pass_through_unchanged(client: Client) -> None:
    async with Client(upstream(), read_timeout_seconds=60) as direct:
        expected = [t.model_dump(by_alias=True) for t in (await direct.list_tools()).tools]
    listed = [t.model_dump(by_alias=True) for t in (await client.list_tools()).tools]
    assert listed[:-1] == expected  # names, schemas, annotations, descriptions
    assert listed[-1]["name"] == "tempomem_advance_clock"  # --clock sim only
    annotations = {t["name"]: t["annotations"] for t in expected}
    assert annotations["get_count"]["readOnlyHint"] is True
    assert annotations["reset_counts"]["destructiveHint"] is True


async def test_repeat_within_horizon_is_served_from_cache(client: Client) -> None:
    first = await client.call_tool("get_count", {"name": "cache"})
    meta = freshness(first)
    assert meta["from_cache"] is False and meta["age_s"] == 0.0 and meta["horizon_s"] == 60.0
    count = structured(first)["calls"]
    again = await client.call_tool("get_count", {"name": "cache"})
    assert structured(again) == structured(first)  # the upstream was not called
    assert freshness(again)["from_cache"] is True
    assert freshness(again)["observed_at"] == meta["observed_at"]
    await advance(client, 45)
    later = await client.call_tool("get_count", {"name": "cache"})
    assert structured(later)["calls"] == count
    assert freshness(later)["age_s"] == pytest.approx(45.0)
    assert (
        "45 seconds old, within its horizon of 1 minute (--horizon)" in freshness(later)["reason"]
    )
    now = await advance(client, 16)  # 61 s: past the horizon
    stale = await client.call_tool("get_count", {"name": "cache"})
    assert structured(stale)["calls"] > count
    assert freshness(stale)["from_cache"] is False
    assert "past its horizon" in freshness(stale)["reason"]
    assert parse_timestamp(freshness(stale)["observed_at"]) == pytest.approx(now)


async def test_other_arguments_are_not_served_from_cache(client: Client) -> None:
    first = await client.call_tool("get_count", {"name": "x1"})
    other = await client.call_tool("get_count", {"name": "x2"})
    assert structured(other)["calls"] > structured(first)["calls"]
    assert freshness(other)["from_cache"] is False
    assert "no cached result for these arguments" in freshness(other)["reason"]


async def test_destructive_tool_is_never_cached(client: Client) -> None:
    counts = []
    for _ in range(2):
        result = await client.call_tool("reset_counts", {})
        meta = freshness(result)
        assert meta["from_cache"] is False and meta["horizon_s"] is None
        assert "reset_counts changes the world (by its annotations)" in meta["reason"]
        counts.append(structured(result)["calls"])
    assert counts[1] == counts[0] + 1


async def test_horizon_zero_switches_caching_off(client: Client) -> None:
    first = await client.call_tool("peek_count", {"name": "zero"})
    second = await client.call_tool("peek_count", {"name": "zero"})
    assert structured(second)["calls"] == structured(first)["calls"] + 1
    assert freshness(second)["from_cache"] is False and freshness(second)["horizon_s"] == 0.0
    assert "caching is off for peek_count (--horizon peek_count=0)" in freshness(second)["reason"]


async def test_error_results_are_never_cached(client: Client) -> None:
    failed = await client.call_tool("get_flaky", {})
    assert failed.is_error and "unavailable" in failed.content[0].text  # type: ignore[union-attr]
    assert freshness(failed)["from_cache"] is False
    assert "not cached (unavailable)" in freshness(failed)["reason"]
    recovered = await client.call_tool("get_flaky", {})  # the failure was not served again
    assert structured(recovered)["calls"] == 2 and freshness(recovered)["from_cache"] is False
    repeated = await client.call_tool("get_flaky", {})
    assert structured(repeated)["calls"] == 2 and freshness(repeated)["from_cache"] is True


async def test_the_horizon_a_result_declares(client: Client) -> None:
    first = await client.call_tool("get_forecast", {"city": "Oslo"})
    assert freshness(first)["horizon_s"] == 5.0  # its JSON says "ttl": 5
    await advance(client, 4)
    hit = await client.call_tool("get_forecast", {"city": "Oslo"})
    assert freshness(hit)["from_cache"] is True
    assert "declared by the result" in freshness(hit)["reason"]
    await advance(client, 2)
    assert (
        freshness(await client.call_tool("get_forecast", {"city": "Oslo"}))["from_cache"] is False
    )


async def test_unannotated_lookup_is_cached_by_its_name(client: Client) -> None:
    first = await client.call_tool("describe_item", {"item": "lamp"})
    again = await client.call_tool("describe_item", {"item": "lamp"})
    assert again.content == first.content and freshness(again)["from_cache"] is True


async def test_hanging_upstream_gives_an_error_within_the_timeout(client: Client) -> None:
    start = time.monotonic()
    with pytest.raises(MCPError, match=r"did not answer tools/call hang within 3 s"):
        await client.call_tool("hang", {"seconds": 60})
    assert time.monotonic() - start < TIMEOUT_S + 5
    alive = await client.call_tool("get_count", {"name": "after-hang"})  # the proxy goes on
    assert freshness(alive)["from_cache"] is False


async def test_bad_requests_give_errors(client: Client) -> None:
    bad_type = await client.call_tool("get_count", {"name": 5})  # the upstream's validation
    assert bad_type.is_error and "valid string" in bad_type.content[0].text  # type: ignore[union-attr]
    assert "not cached (error)" in freshness(bad_type)["reason"]
    unknown = await client.call_tool("no_such_tool", {})
    assert unknown.is_error and "Unknown tool" in unknown.content[0].text  # type: ignore[union-attr]
    assert "not in the tool list" in freshness(unknown)["reason"]
    with pytest.raises(MCPError, match="seconds must be finite and >= 0") as caught:
        await client.call_tool("tempomem_advance_clock", {"seconds": -1})
    assert caught.value.error.code == INVALID_PARAMS


async def test_every_call_and_result_is_logged_with_its_time(
    client: Client, redis_server: LocalRedisServer
) -> None:
    start = await advance(client, 0)
    await client.call_tool("get_count", {"name": "logged"})
    await advance(client, 7)
    await client.call_tool("get_count", {"name": "logged"})
    store = RedisStore(redis_server.url, namespace=NAMESPACE)
    try:
        events = AgentEventLog(store, SESSION, embedder="lexical").events(start=start)
    finally:
        store.close()
    mine = [e for e in events if e.get("name") == "get_count" and "logged" in str(e)]
    calls = [e for e in mine if e["kind"] == "tool_call"]
    results = [e for e in events if e["kind"] == "tool_result" and e["call_id"] in {
        c["call_id"] for c in calls
    }]  # fmt: skip
    assert [c["arguments"] for c in calls] == ['{"name": "logged"}'] * 2
    assert [r["t"] - start for r in results] == pytest.approx([0.0, 7.0])
    assert [r.get("cached", False) for r in results] == [False, True]
    assert '"calls"' in results[0]["content"]


async def test_crashed_upstream_gives_errors_and_cached_results_survive() -> None:
    dead_store = f"redis://127.0.0.1:{free_port()}/0"  # the proxy goes on without its log
    params = proxy("--stamp", "--timeout", "10", "--redis", dead_store)
    async with Client(params, read_timeout_seconds=60) as client:
        cached = await client.call_tool("get_count", {"name": "kept"})
        text = cached.content[0].text  # type: ignore[union-attr]
        assert text.startswith("[tempomem: observed just now (") and "from the tool]\n{" in text
        start = time.monotonic()
        with pytest.raises(MCPError, match="closed the connection"):
            await client.call_tool("crash", {})
        with pytest.raises(MCPError, match=r"closed the connection.*restart the proxy"):
            await client.call_tool("get_count", {"name": "new"})
        assert time.monotonic() - start < 5
        kept = await client.call_tool("get_count", {"name": "kept"})
        assert freshness(kept)["from_cache"] is True
        assert kept.content[0].text.endswith("from cache]\n" + text.split("\n", 1)[1])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["/nonexistent/mcp-server"], "did not start"),
        ([UPSTREAM_COMMAND[0], "-c", "import time; time.sleep(60)"], "did not start.*timed out"),
    ],
    ids=["missing", "silent"],
)
async def test_upstream_that_does_not_start(command: list[str], words: str) -> None:
    async with Client(proxy("--timeout", "1", upstream=command), read_timeout_seconds=60) as client:
        start = time.monotonic()
        with pytest.raises(MCPError, match=words):
            await client.list_tools()
        with pytest.raises(MCPError, match=words):
            await client.call_tool("get_count", {})
        assert time.monotonic() - start < 10  # answered at once: the proxy knows


def test_malformed_json_rpc_gets_json_rpc_errors() -> None:
    raw = RawStdio([TEMPOMEM, "mcp", "proxy", "--", *UPSTREAM_COMMAND])
    try:
        assert raw.initialize()["result"]["serverInfo"]["name"] == "tempomem-proxy"
        raw.send("{this is not json")
        assert raw.receive()["error"] == {
            "code": -32700,
            "message": "Parse error: the line is not JSON",
        }
        raw.send({"hello": "world"})
        assert raw.receive()["error"]["code"] == -32600  # not JSON-RPC
        raw.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}})
        answer = raw.receive()
        assert answer["id"] == 1 and answer["error"]["code"] == INVALID_PARAMS  # no name
        raw.send({"jsonrpc": "2.0", "id": 2, "method": "tools/frobnicate", "params": {}})
        assert raw.receive()["error"]["code"] == -32601  # method not found
        raw.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "get_count", "arguments": {"name": "raw"}}})  # fmt: skip
        answer = raw.receive()
        assert answer["id"] == 3 and answer["result"]["structuredContent"]["name"] == "raw"
        assert answer["result"]["_meta"]["tempomem/freshness"]["from_cache"] is False
    finally:
        raw.close()
    assert raw.process.returncode == 0
