"""services.mcp_freshness: which MCP tool results the proxy may answer from, for how long, and
what `_meta["tempomem/freshness"]` says (in-process; the proxy's processes are tested in
test_mcp_proxy.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from memory import SimClock, parse_timestamp
from memory.temporal import CLASS_HORIZON_S, ToolCallAdvisor, Volatility
from services.mcp_freshness import (
    FRESHNESS_KEY,
    Freshness,
    FreshnessCache,
    arguments_key,
    parse_horizons,
    with_freshness,
)

T0 = 1_750_000_000.0


def tool(name: str, description: str = "", **annotations: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "description": description,
        "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    if annotations:
        spec["annotations"] = annotations
    return spec


def text_result(text: str, **extra: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False, **extra}


TOOLS = [
    tool("read_sensor", "Reads the sensor.", readOnlyHint=True),
    tool("wipe_disk", "Erases everything.", readOnlyHint=False, destructiveHint=True),
    tool("destroy_world", "Does things.", destructiveHint=True),
    tool("get_weather", "Current weather for a city."),
    tool("frobnicate", "Frobnicates."),
    tool("get_quote", "Stock quote.", readOnlyHint=True),
]


@pytest.fixture
def clock() -> SimClock:
    return SimClock(start=T0)


@pytest.fixture
def cache(clock: SimClock) -> FreshnessCache:
    cache = FreshnessCache(clock, horizons={"read_sensor": 60, "get_quote": 0})
    cache.learn_tools(TOOLS)
    return cache


def test_parse_horizons() -> None:
    assert parse_horizons(["get_weather=600", "a.b=0", "x=1.5"]) == {
        "get_weather": 600.0,
        "a.b": 0.0,
        "x": 1.5,
    }
    for bad, words in [
        ("get_weather", "TOOL=SECONDS"),
        ("=5", "TOOL=SECONDS"),
        ("x=soon", "not a number"),
        ("x=-1", ">= 0"),
        ("x=nan", "finite"),
        ("x=inf", "finite"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_horizons([bad])
    with pytest.raises(ValueError, match="twice"):
        parse_horizons(["x=1", "x=2"])


def test_policies_follow_annotations_then_names(cache: FreshnessCache) -> None:
    advisor = ToolCallAdvisor()
    sensor, wipe, destroy = (cache.policy(n) for n in ("read_sensor", "wipe_disk", "destroy_world"))
    assert (sensor.cacheable, sensor.horizon_s, sensor.horizon_source) == (True, 60.0, "--horizon")
    assert not wipe.cacheable and wipe.horizon_s is None and "annotations" in wipe.note
    assert not destroy.cacheable and destroy.horizon_s is None
    weather = cache.policy("get_weather")  # no annotations: a lookup by its name
    assert weather.cacheable
    assert weather.horizon_s == advisor.horizon(TOOLS[3]).horizon_s
    frob = cache.policy("frobnicate")  # nothing says it is read-only
    assert not frob.cacheable and "read-only" in frob.note
    quote = cache.policy("get_quote")  # --horizon get_quote=0
    assert not quote.cacheable and quote.horizon_s == 0.0 and "caching is off" in quote.note
    unknown = cache.policy("not_listed")
    assert not unknown.cacheable and "not in the tool list" in unknown.note


def test_hit_within_horizon_miss_past_it(cache: FreshnessCache, clock: SimClock) -> None:
    args = {"city": "Paris"}
    first = cache.lookup("read_sensor", args)
    assert first.result is None and "no cached result" in first.reason
    result = text_result('{"celsius": 21}')
    fresh = cache.record("read_sensor", args, result, clock.now(), first.reason)
    assert (fresh.from_cache, fresh.age_s, fresh.horizon_s) == (False, 0.0, 60.0)
    clock.advance(59.5)
    hit = cache.lookup("read_sensor", {"city": "Paris"})
    assert hit.result == result and hit.freshness is not None
    assert hit.freshness.from_cache and math.isclose(hit.freshness.age_s, 59.5)
    assert hit.freshness.observed_at == T0 and hit.freshness.horizon_s == 60.0
    assert hit.freshness.reason == (
        "from cache: same arguments, 59 seconds old, within its horizon of 1 minute (--horizon)"
    )
    other = cache.lookup("read_sensor", {"city": "Rome"})
    assert other.result is None and "no cached result" in other.reason
    clock.advance(1.0)
    stale = cache.lookup("read_sensor", args)
    assert stale.result is None and "past its horizon" in stale.reason
    assert len(cache) == 0  # the stale entry is gone


def test_argument_order_does_not_matter() -> None:
    assert arguments_key("t", {"a": 1, "b": [1, 2]}) == arguments_key("t", {"b": [1, 2], "a": 1})
    assert arguments_key("t", {"a": 1}) != arguments_key("t", {"a": "1"})
    assert arguments_key("t", None) == arguments_key("t", {})


@pytest.mark.parametrize("name", ["wipe_disk", "destroy_world", "frobnicate", "get_quote"])
def test_never_cached(cache: FreshnessCache, clock: SimClock, name: str) -> None:
    fresh = cache.record(name, {}, text_result("done"), clock.now(), "called")
    assert not fresh.from_cache
    assert cache.lookup(name, {}).result is None
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("result", "status"),
    [
        ({"content": [{"type": "text", "text": "boom"}], "isError": True}, "error"),
        (text_result("Error: upstream exploded"), "error"),
        (text_result("service unavailable, try again later"), "unavailable"),
        (text_result("{}"), "empty"),
    ],
)
def test_failed_results_are_not_cached(
    cache: FreshnessCache, clock: SimClock, result: dict[str, Any], status: str
) -> None:
    fresh = cache.record("read_sensor", {}, result, clock.now(), "called the tool")
    assert f"not cached ({status})" in fresh.reason
    assert cache.lookup("read_sensor", {}).result is None


def test_result_declared_freshness(cache: FreshnessCache, clock: SimClock) -> None:
    args = {"city": "Oslo"}
    fresh = cache.record("get_weather", args, text_result('{"sky": "clear", "ttl": 5}'), T0, "c")
    assert fresh.horizon_s == 5.0
    clock.advance(5.0)
    hit = cache.lookup("get_weather", args)
    assert hit.freshness is not None and "declared by the result" in hit.freshness.reason
    clock.advance(0.5)
    assert cache.lookup("get_weather", args).result is None
    # Cache-Control: no-store in the result's _meta: not cached at all
    no_store = text_result("clear", _meta={"headers": {"Cache-Control": "no-store"}})
    assert "not cached" in cache.record("get_weather", args, no_store, clock.now(), "c").reason
    assert cache.lookup("get_weather", args).result is None
    # --horizon wins over what the result declares
    cache.record("read_sensor", {}, text_result('{"ttl": 1}'), clock.now(), "c")
    clock.advance(30)
    assert cache.lookup("read_sensor", {}).result is not None


def test_bounds(clock: SimClock) -> None:
    cache = FreshnessCache(clock, {"read_sensor": 60}, max_entries=2, max_result_chars=200)
    cache.learn_tools(TOOLS)
    for city in ("a", "b", "c"):
        cache.record("read_sensor", {"city": city}, text_result(city), T0, "c")
    assert len(cache) == 2
    assert cache.lookup("read_sensor", {"city": "a"}).result is None  # least recently used
    big = cache.record("read_sensor", {"city": "d"}, text_result("x" * 500), T0, "c")
    assert "over 200 characters" in big.reason
    assert cache.lookup("read_sensor", {"city": "d"}).result is None
    with pytest.raises(ValueError, match="max_entries"):
        FreshnessCache(clock, max_entries=0)


def test_a_changed_tool_forgets_its_results(cache: FreshnessCache, clock: SimClock) -> None:
    cache.record("read_sensor", {}, text_result("1"), T0, "c")
    cache.record("get_weather", {}, text_result("sunny"), T0, "c")
    cache.learn_tools(TOOLS)  # the same specs: nothing forgotten
    assert len(cache) == 2
    cache.learn_tools([tool("read_sensor", "Reads the sensor (v2).", readOnlyHint=True)])
    assert cache.lookup("read_sensor", {}).result is None
    assert cache.lookup("get_weather", {}).result is not None


def test_freshness_meta_and_stamp() -> None:
    freshness = Freshness(T0, 125.0, 600.0, True, "from cache: ...")
    result = text_result("21 C", _meta={"other": 1})
    out = with_freshness(result, freshness)
    meta = out["_meta"][FRESHNESS_KEY]
    assert out["_meta"]["other"] == 1 and out["content"] == result["content"]
    assert parse_timestamp(meta["observed_at"]) == T0
    assert meta == {**meta, "age_s": 125.0, "horizon_s": 600.0, "from_cache": True}
    assert json.loads(json.dumps(out)) == out  # plain JSON
    stamped = with_freshness(result, freshness, stamp=True)
    first = stamped["content"][0]["text"]
    assert first.startswith("[tempomem: observed 2 minutes 5 seconds ago (")
    assert first.endswith("from cache]\n21 C")
    assert result["content"][0]["text"] == "21 C"  # the input is not changed
    image = {"content": [{"type": "image", "data": "AA==", "mimeType": "image/png"}]}
    stamped = with_freshness(image, Freshness(T0, 0.2, None, False, "called"), stamp=True)
    assert stamped["content"][0]["text"].startswith("[tempomem: observed just now")
    assert stamped["content"][1]["type"] == "image"


def test_tool_horizons_come_from_the_advisor(clock: SimClock) -> None:
    cache = FreshnessCache(clock)
    stock = tool("get_stock_price", "Live stock price quote.", readOnlyHint=True)
    declared = {**tool("get_rates", "Exchange rates.", readOnlyHint=True), "x-horizon-s": 42}
    cache.learn_tools([stock, declared])
    policy = cache.policy("get_stock_price")
    assert policy.horizon_s == ToolCallAdvisor().horizon(stock).horizon_s
    assert policy.horizon_s < CLASS_HORIZON_S[Volatility.MINUTES]  # a realtime tool
    assert (cache.policy("get_rates").horizon_s, cache.policy("get_rates").horizon_source) == (
        42.0,
        "declared by the tool",
    )
