"""Failure class 3 and declared freshness: an explicit request for a fresh look calls whatever
the horizon; freshness a result declares (Cache-Control, Expires, ttl fields, MCP `_meta`) wins
over every other horizon."""

from __future__ import annotations

from typing import Any

import pytest
from test_advisor_support import Ask, ask_again, at, conversation, tool

from memory.temporal import ToolCallAdvisor, fresh_for
from memory.temporal.results import declared_freshness

WEATHER = tool("get_weather", "Current weather for a city.", "city")
FLIGHT = tool("get_flight_status", "Status, gate and delay of a flight.", "flight")
PARCEL = tool("track_parcel", "Tracking status of a parcel.", "tracking_id")
QUOTE = tool("get_stock_quote", "Live stock quote for a ticker.", "ticker")
FX = tool("get_exchange_rate", "Exchange rate between two currencies.", "base", "quote")
NEWS = tool("get_headlines", "Latest news headlines about a topic.", "topic")
SHOP = tool("get_store_hours", "Opening hours of a store.", "store")
DOCS = tool("get_api_reference", "Published API reference documentation of a library.", "lib")


@pytest.mark.parametrize(
    "ask",
    [
        (WEATHER, {"city": "Oslo"}, {"city": "Oslo", "temp_c": 9}, "Can you check again?", 20),
        (
            FLIGHT,
            {"flight": "LH400"},
            {"flight": "LH400", "gate": "B12"},
            "Is the gate still B12?",
            30,
        ),
        (PARCEL, {"tracking_id": "Z9"}, {"status": "in transit"}, "Any update on my parcel?", 120),
        (
            QUOTE,
            {"ticker": "NVDA"},
            {"ticker": "NVDA", "price": 131.2},
            "Please double-check NVDA.",
            5,
        ),
        (FX, {"base": "EUR", "quote": "JPY"}, {"rate": 161.9}, "What's EUR/JPY right now?", 60),
        (
            NEWS,
            {"topic": "climate"},
            {"headlines": ["COP talks open"]},
            "Refresh the climate news.",
            300,
        ),
        (
            SHOP,
            {"store": "Mitte"},
            {"store": "Mitte", "opens": "09:00"},
            "Confirm Mitte opens at 9.",
            60,
        ),
        (
            DOCS,
            {"lib": "numpy"},
            {"lib": "numpy", "version": "2.1"},
            "Is that still the latest numpy?",
            600,
        ),
        (PARCEL, {"tracking_id": "Z9"}, {"status": "in transit"}, "Has it arrived yet?", 90),
    ],
)
def test_explicit_freshness_requests_call_whatever_the_horizon(ask: Ask) -> None:
    decision = ask_again(*ask)
    assert decision.call_tool and decision.reason_code == "freshness_request", decision.reason
    assert "freshness_request" in decision.signals


def test_recalling_what_was_said_is_not_a_freshness_request() -> None:
    messages = conversation(
        "Status of LH400?",
        "get_flight_status",
        {"flight": "LH400"},
        {"flight": "LH400", "gate": "B12", "status": "on time"},
        "LH400 is on time at gate B12.",
        "What was the gate again?",
        40,
    )
    decision = ToolCallAdvisor().decide(messages, [FLIGHT])
    assert not decision.call_tool and decision.reason_code == "within_horizon", decision.reason


def _reference_chat(result: Any, gap_s: float, **tool_message: Any) -> list[dict[str, Any]]:
    """A docs lookup (a tool that would keep for weeks) with `result`, asked again later."""
    messages = conversation(
        "What does numpy.clip do?",
        "get_api_reference",
        {"lib": "numpy"},
        result,
        "It limits values to an interval.",
        "Which arguments does numpy.clip take?",
        gap_s,
    )
    messages[3].update(tool_message)
    return messages


@pytest.mark.parametrize(
    ("result", "message_fields", "declared_s"),
    [
        ("HTTP/1.1 200 OK\nCache-Control: public, max-age=60\n\nclip(a, a_min, a_max)", {}, 60),
        ({"doc": "clip(a, a_min, a_max) arguments", "ttl": 60}, {}, 60),
        ({"doc": "clip(a, a_min, a_max) arguments", "_meta": {"ttl_s": 60}}, {}, 60),
        ({"doc": "clip(a, a_min, a_max) arguments", "valid_until": at(62)}, {}, 60),
        (
            {"doc": "clip(a, a_min, a_max) arguments"},
            {"headers": {"Cache-Control": "max-age=60"}},
            60,
        ),
        ({"doc": "clip(a, a_min, a_max) arguments"}, {"headers": {"Cache-Control": "no-store"}}, 0),
    ],
)
def test_freshness_declared_by_a_result_wins(
    result: Any, message_fields: dict[str, Any], declared_s: float
) -> None:
    advisor = ToolCallAdvisor()
    later = advisor.decide(_reference_chat(result, 300, **message_fields), [DOCS])
    assert later.call_tool and later.reason_code == "past_horizon", later.reason
    assert later.horizon_s == pytest.approx(declared_s)
    assert later.horizon_source is not None and later.horizon_source.startswith("result")
    assert "horizon_declared_by_result" in later.signals
    if declared_s:
        soon = advisor.decide(_reference_chat(result, 30, **message_fields), [DOCS])
        assert not soon.call_tool, soon.reason
    # without the declaration, the same docs lookup keeps for weeks
    plain = advisor.decide(_reference_chat({"doc": "clip(a, a_min, a_max) arguments"}, 300), [DOCS])
    assert not plain.call_tool and plain.horizon_s is not None and plain.horizon_s > 86400


def test_a_long_declared_freshness_keeps_a_live_quote() -> None:
    messages = conversation(
        "NVDA?",
        "get_stock_quote",
        {"ticker": "NVDA"},
        {"ticker": "NVDA", "price": 131.2, "_meta": {"cacheControl": "max-age=3600"}},
        "131.2 USD.",
        "What's NVDA's price?",
        600,
    )
    decision = ToolCallAdvisor().decide(messages, [QUOTE])
    assert not decision.call_tool and decision.horizon_s == 3600, decision.reason


def test_the_result_beats_the_spec_and_the_spec_beats_inference() -> None:
    declared = tool(
        "get_api_reference", DOCS["function"]["description"], "lib", **{"x-horizon-s": 120}
    )
    chat = _reference_chat({"doc": "clip(a, a_min, a_max) arguments"}, 300)
    by_spec = ToolCallAdvisor().decide(chat, [declared])
    assert by_spec.call_tool and (by_spec.horizon_s, by_spec.horizon_source) == (120, "declared")
    chat = _reference_chat({"doc": "clip(a, a_min, a_max) arguments", "max_age": 86400}, 300)
    by_result = ToolCallAdvisor().decide(chat, [declared])
    assert not by_result.call_tool and by_result.horizon_s == 86400

    @fresh_for(10)
    def get_api_reference(lib: str) -> str:
        """Published API reference documentation of a library."""
        return ""

    by_decorator = ToolCallAdvisor().decide(
        _reference_chat({"doc": "clip arguments"}, 30), [get_api_reference]
    )
    assert by_decorator.call_tool and by_decorator.horizon_s == 10


@pytest.mark.parametrize(
    ("text", "extra", "ttl", "expires"),
    [
        ("Cache-Control: max-age=90", None, 90.0, None),
        ("Cache-Control: no-cache", None, 0.0, None),
        ("Cache-Control: immutable", None, 365 * 86400.0, None),
        ("Expires: Tue, 03 Jun 2025 10:00:00 GMT", None, None, 1748944800.0),
        ('{"expires_in_ms": 1500}', None, 1.5, None),
        ('{"x-horizon-s": 45}', None, 45.0, None),
        ('{"next_update": "2025-06-03T10:00:00Z"}', None, None, 1748944800.0),
        ('{"meta": {"max-age": "30"}}', None, 30.0, None),
        ("plain text", {"_meta": {"ttl": 12}}, 12.0, None),
    ],
)
def test_declared_freshness_forms(
    text: str, extra: dict[str, Any] | None, ttl: float | None, expires: float | None
) -> None:
    found = declared_freshness(text, extra)
    assert found is not None and (found.ttl_s, found.expires_at) == (ttl, expires)


def test_no_declaration_is_none() -> None:
    assert declared_freshness('{"price": 3, "records": [{"ttl": 5}]}') is None
    assert declared_freshness("Sunny and 18 C") is None
