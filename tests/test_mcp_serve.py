"""`tempomem mcp serve` as a real process driven by `mcp.Client`: the memory tools round trip
on the in-process store and on a real redis-server, over stdio and over streamable HTTP with
bearer tokens (and behind `tempomem mcp proxy --upstream-url`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kv_store import RedisStore
from kv_store.redis_server import LocalRedisServer
from memory import parse_timestamp
from memory.temporal import ToolCallAdvisor
from services.agent_log import AgentEventLog
from tests.mcp_processes import (
    TEMPOMEM,
    RawStdio,
    free_port,
    freshness,
    structured,
    tempomem,
    wait_for_port,
)

pytestmark = pytest.mark.anyio
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "x-horizon-s": 600,
}
T0 = "2025-06-01T09:00:00+00:00"
TOKENS = {"tenant-a": "a" * 24, "tenant-b": "b" * 24}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[Client]:
    params = tempomem("mcp", "serve", "--clock", "sim", "--search", "lexical")
    async with Client(params, read_timeout_seconds=60) as connected:
        yield connected


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    return structured(await client.call_tool(tool, arguments))


async def error_text(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    return str(result.content[0].text)  # type: ignore[union-attr]


async def record_weather_exchange(client: Client, session: str, start: float) -> None:
    """A user asks, the agent calls get_weather, gets a result and answers (2 s apart)."""
    events: list[dict[str, Any]] = [
        {"kind": "message", "role": "user", "content": "What's the weather in Paris?"},
        {"kind": "tool_call", "name": "get_weather", "arguments": {"city": "Paris"}},
        {
            "kind": "tool_result",
            "name": "get_weather",
            "content": {"city": "Paris", "sky": "sunny"},
        },
        {"kind": "message", "role": "assistant", "content": "It is sunny in Paris."},
    ]
    call_id = None
    for offset, event in enumerate(events):
        if event["kind"] == "tool_result":
            event["call_id"] = call_id
        recorded = await call(
            client, "record_event", session=session, time=start + 2 * offset, **event
        )
        assert parse_timestamp(recorded["time"]) == pytest.approx(start + 2 * offset, abs=1e-3)
        call_id = recorded["call_id"] if event["kind"] == "tool_call" else call_id


async def test_tools_have_schemas_and_annotations(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {
        "record_event", "search_memory", "time_since", "advise_tool_call", "now",
        "tempomem_advance_clock",
    }  # fmt: skip
    for tool in tools.values():
        assert tool.input_schema["type"] == "object" and tool.output_schema is not None
    for name in ("search_memory", "time_since", "advise_tool_call", "now"):
        assert tools[name].annotations is not None and tools[name].annotations.read_only_hint
    assert tools["record_event"].annotations.read_only_hint is False  # type: ignore[union-attr]
    kinds = tools["record_event"].input_schema["properties"]["kind"]
    assert set(kinds["enum"]) == {"message", "tool_call", "tool_result"}


async def test_round_trip_on_the_local_store(client: Client) -> None:
    start = (await call(client, "now"))["t"]
    await record_weather_exchange(client, "trip", start)
    after = (await call(client, "tempomem_advance_clock", seconds=126))["t"]
    assert after == pytest.approx(start + 126)
    since = await call(client, "time_since", session="trip")
    assert since["lines"] == [
        "2 minutes 6 seconds since the last user message",
        "2 minutes 2 seconds since the last get_weather result",
    ]
    assert since["since_last_user_s"] == pytest.approx(126.0)
    [weather] = since["tools"]
    assert weather["name"] == "get_weather"
    assert (weather["since_last_call_s"], weather["since_last_result_s"]) == pytest.approx(
        (124.0, 122.0)
    )
    assert since["line"].startswith("Current time: ")
    hits = (await call(client, "search_memory", session="trip", query="sunny weather"))["hits"]
    assert hits[0]["kind"] == "tool_result" and "sunny" in hits[0]["text"]
    assert hits[0]["age_s"] == pytest.approx(122.0)
    before_result = await call(
        client, "search_memory", session="trip", query="sunny", as_of=start + 3
    )
    assert all("sunny" not in hit["text"] for hit in before_result["hits"])


async def test_advice_matches_the_advisor(client: Client) -> None:
    start = (await call(client, "now"))["t"]
    await record_weather_exchange(client, "advice", start)
    await call(client, "record_event", session="advice", kind="message", role="user",
               content="Is it sunny in Paris?", time=start + 300)  # fmt: skip
    advice = await call(client, "advise_tool_call", session="advice", tools=[WEATHER])
    assert advice["call_tool"] is False and advice["reason_code"] == "within_horizon"
    assert advice["horizon_s"] == 600.0 and advice["age_s"] == pytest.approx(296.0)
    await call(client, "tempomem_advance_clock", seconds=700)
    stale = await call(client, "advise_tool_call", session="advice", tools=[WEATHER])
    assert stale["call_tool"] is True and stale["reason_code"] == "past_horizon"
    # messages given inline, decided at a given time: the same as the advisor in-process
    messages = [
        {"role": "user", "content": "Weather in Rome?", "time": T0},
        {"role": "assistant", "content": None, "time": T0, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Rome: 31 C, clear", "time": T0},
        {"role": "user", "content": "Is it still clear in Rome?", "time": "2025-06-01T09:05:00Z"},
    ]  # fmt: skip
    now = "2025-06-01T09:05:00Z"
    served = await call(client, "advise_tool_call", messages=messages, tools=[WEATHER], now=now)
    expected = ToolCallAdvisor().decide(messages, [WEATHER], now=now)
    assert (served["call_tool"], served["reason_code"], served["reason"]) == (
        expected.call_tool, expected.reason_code, expected.reason,
    )  # fmt: skip


async def test_bad_arguments_give_tool_errors(client: Client) -> None:
    assert "needs a role" in await error_text(client, "record_event", kind="message", content="x")
    assert "call_id" in await error_text(client, "record_event", kind="tool_result", content="x")
    assert "session_id must be" in await error_text(client, "time_since", session="../etc")
    assert "kind" in await error_text(client, "record_event", kind="dream")
    assert "limit" in await error_text(client, "search_memory", query="x", limit=0)
    now = (await call(client, "now"))["t"]
    await call(client, "record_event", session="order", kind="message", role="user",
               content="first", time=now)  # fmt: skip
    backwards = await error_text(client, "record_event", session="order", kind="message",
                                 role="user", content="second", time=now - 60)  # fmt: skip
    assert "may not go backwards" in backwards
    assert "ISO-8601" in await error_text(client, "search_memory", query="x", as_of="yesterday")


async def test_redis_store_outlives_the_server(redis_server: LocalRedisServer) -> None:
    options = ("mcp", "serve", "--redis", redis_server.url, "--namespace", "mcp-serve-test",
               "--search", "lexical")  # fmt: skip
    async with Client(tempomem(*options), read_timeout_seconds=60) as first:
        start = (await call(first, "now"))["t"] - 60
        await record_weather_exchange(first, "kept", start)
    async with Client(tempomem(*options), read_timeout_seconds=60) as second:
        since = await call(second, "time_since", session="kept")
        assert since["tools"][0]["since_last_result_s"] == pytest.approx(56.0, abs=30.0)
        hits = (await call(second, "search_memory", session="kept", query="sunny"))["hits"]
        assert "sunny" in hits[0]["text"]
    store = RedisStore(redis_server.url, namespace="mcp-serve-test")
    try:
        events = AgentEventLog(store, "kept", embedder="lexical").events()
    finally:
        store.close()
    assert [e["kind"] for e in events] == ["message", "tool_call", "tool_result", "message"]
    assert [e["t"] - start for e in events] == pytest.approx([0.0, 2.0, 4.0, 6.0], abs=1e-3)


def test_malformed_lines_and_a_store_that_is_down_give_errors() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    raw = RawStdio([TEMPOMEM, "mcp", "serve", "--redis", dead, "--search", "lexical"])
    try:
        assert raw.initialize()["result"]["serverInfo"]["name"] == "tempomem-memory"
        raw.send("][")
        assert raw.receive()["error"]["code"] == -32700  # not JSON
        raw.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": 3}})
        assert raw.receive()["error"]["code"] == -32602  # bad params
        record = {"name": "record_event", "arguments": {"kind": "message", "role": "user"}}
        raw.send({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": record})
        answer = raw.receive()["result"]
        assert answer["isError"] and "the store is unavailable" in answer["content"][0]["text"]
        raw.send({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "now"}})
        assert raw.receive()["result"]["structuredContent"]["clock"] == "system"  # goes on
    finally:
        raw.close()


@pytest.fixture(scope="module")
def http_server(redis_server: LocalRedisServer) -> Iterator[str]:
    port = free_port()
    tokens = [f"{namespace}:{token}" for namespace, token in TOKENS.items()]
    argv = [TEMPOMEM, "mcp", "serve", "--http", f"127.0.0.1:{port}", "--redis", redis_server.url,
            "--search", "lexical", "--token", tokens[0], "--token", tokens[1]]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        for token in TOKENS.values():
            assert token not in stderr  # tokens are secrets


def http_client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=60)


async def test_http_tokens_choose_the_namespace(http_server: str) -> None:
    async with http_client(http_server, TOKENS["tenant-a"]) as tenant_a:
        now = (await call(tenant_a, "now"))["t"]
        await call(tenant_a, "record_event", session="shared-name", kind="message", role="user",
                   content="secret plans for tenant a", time=now)  # fmt: skip
        hits = await call(tenant_a, "search_memory", session="shared-name", query="secret plans")
        assert len(hits["hits"]) == 1
    async with http_client(http_server, TOKENS["tenant-b"]) as tenant_b:
        hits = await call(tenant_b, "search_memory", session="shared-name", query="secret plans")
        assert hits["hits"] == []  # another namespace
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    for headers in ({}, {"Authorization": "Bearer " + "c" * 24}):
        answer = httpx.post(http_server, json=initialize, headers=headers, timeout=30)
        assert answer.status_code == 401 and "bearer token" in answer.text
        assert TOKENS["tenant-a"] not in answer.text
    wrong_namespace = {
        "Authorization": f"Bearer {TOKENS['tenant-a']}",
        "X-Tempomem-Namespace": "tenant-b",
    }
    assert httpx.post(http_server, json=initialize, headers=wrong_namespace).status_code == 403


async def test_proxy_in_front_of_an_http_upstream(http_server: str) -> None:
    env = {**os.environ, "TEMPOMEM_UPSTREAM_TOKEN": TOKENS["tenant-a"]}
    params = tempomem("mcp", "proxy", "--upstream-url", http_server, env=env)
    async with Client(params, read_timeout_seconds=60) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"record_event", "now"} <= names
        recorded = await client.call_tool(
            "record_event", {"session": "via-proxy", "kind": "message", "role": "user",
                             "content": "hello through the proxy"})  # fmt: skip
        assert freshness(recorded)["from_cache"] is False
        assert "record_event changes the world" in freshness(recorded)["reason"]
        first = await client.call_tool("time_since", {"session": "via-proxy"})
        again = await client.call_tool("time_since", {"session": "via-proxy"})
        assert freshness(again)["from_cache"] is True and again.content == first.content
