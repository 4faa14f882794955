"""Failure class 2: after an error, a refusal, an overload, a timeout or an empty result, a
repeated request needs a new call even seconds later; a question about the failure does not."""

from __future__ import annotations

from typing import Any

import pytest
from test_advisor_support import at, conversation, exchange, tool

from memory.temporal import ToolCallAdvisor
from memory.temporal.results import ResultStatus, result_status

WEATHER = tool("get_weather", "Current weather for a city.", "city")
FLIGHTS = tool("search_flights", "Search flights between two airports on a date.", "from", "to")
QUOTE = tool("get_stock_quote", "Stock quote for a ticker.", "ticker")
PAY = tool("pay_invoice", "Pay an invoice with the saved card.", "invoice_id")
TRANSLATE = tool("translate_text", "Translate a text into another language.", "text", "target")


@pytest.mark.parametrize(
    ("spec", "arguments", "result", "follow_up", "status"),
    [
        (
            WEATHER,
            {"city": "Oslo"},
            "Error: upstream weather service timed out",
            "What's the weather in Oslo?",
            "timeout",
        ),
        (
            FLIGHTS,
            {"from": "AMS", "to": "LIS"},
            {"error": {"code": 503, "message": "Service Unavailable"}},
            "Can you look for AMS to LIS flights?",
            "unavailable",
        ),
        (QUOTE, {"ticker": "AAPL"}, "", "What's AAPL trading at?", "empty"),
        (QUOTE, {"ticker": "AAPL"}, [], "AAPL price?", "empty"),
        (
            TRANSLATE,
            {"text": "Guten Morgen", "target": "en"},
            "I'm sorry, I cannot help with that request.",
            "Translate 'Guten Morgen' to English.",
            "refused",
        ),
        (
            WEATHER,
            {"city": "Oslo"},
            {"status": "error", "message": "rate limit exceeded, try later"},
            "Weather in Oslo?",
            "rate_limited",
        ),
        (
            FLIGHTS,
            {"from": "AMS", "to": "LIS"},
            "The model is overloaded. Please try again later.",
            "Try again please",
            "unavailable",
        ),
    ],
)
def test_a_failed_result_is_retried_seconds_later(
    spec: dict[str, Any], arguments: dict[str, Any], result: Any, follow_up: str, status: str
) -> None:
    name = spec["function"]["name"]
    messages = conversation(
        "First ask.", name, arguments, result, "Sorry, that failed.", follow_up, 8
    )
    decision = ToolCallAdvisor().decide(messages, [spec])
    assert decision.call_tool and decision.reason_code == "retry_after_failure", decision.reason
    assert f"result_{status}" in decision.signals


def test_flagged_results_fail_whatever_their_text() -> None:
    messages = conversation(
        "Weather in Oslo?", "get_weather", {"city": "Oslo"}, "{}", "Hmm.", "And now?", 5
    )
    messages[3]["content"] = {
        "content": [{"type": "text", "text": "quota exceeded"}],
        "isError": True,
    }  # an MCP CallToolResult
    decision = ToolCallAdvisor().decide(messages, [WEATHER])
    assert decision.call_tool and "result_rate_limited" in decision.signals
    messages[3]["content"] = '{"city": "Oslo", "temp_c": 9}'
    messages[3]["status"] = "error"  # a LangChain ToolMessage status
    assert ToolCallAdvisor().decide(messages, [WEATHER]).reason_code == "retry_after_failure"


def test_a_question_about_the_failure_is_answered_from_it() -> None:
    messages = conversation(
        "Pay invoice INV-9.",
        "pay_invoice",
        {"invoice_id": "INV-9"},
        {"status": "failed", "reason": "card declined"},
        "The payment failed.",
        "Why did it fail?",
        20,
    )
    decision = ToolCallAdvisor().decide(messages, [PAY])
    assert not decision.call_tool and decision.reason_code == "failure_explained"
    messages[-1]["content"] = "Try paying INV-9 again."
    assert ToolCallAdvisor().decide(messages, [PAY]).call_tool


def test_a_good_result_after_a_failed_one_is_used() -> None:
    messages = conversation(
        "Weather in Oslo?", "get_weather", {"city": "Oslo"}, "Error: timeout", "Retrying.", "x", 0
    )
    messages = [
        *messages[:-1],
        *exchange("get_weather", {"city": "Oslo"}, {"city": "Oslo", "temp_c": 9}, 10, "c2"),
        {"role": "user", "content": "How cold is it in Oslo?", "time": at(60)},
    ]
    decision = ToolCallAdvisor().decide(messages, [WEATHER])
    assert not decision.call_tool and decision.reason_code == "within_horizon", decision.reason


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("", ResultStatus.EMPTY),
        ("null", ResultStatus.EMPTY),
        ("{}", ResultStatus.EMPTY),
        ('{"results": []}', ResultStatus.EMPTY),
        ("Traceback (most recent call last): ...", ResultStatus.ERROR),
        ("HTTP 429 Too Many Requests", ResultStatus.RATE_LIMITED),
        ("Gateway timeout", ResultStatus.TIMEOUT),
        ('{"ok": false, "error": "permission denied"}', ResultStatus.REFUSED),
        ('{"status": "failed", "code": 500}', ResultStatus.ERROR),
        # answers, not failures
        ("No flights found for that date.", ResultStatus.OK),
        ("Rooms unavailable on those dates.", ResultStatus.OK),
        ("Room 503 is free.", ResultStatus.OK),
        (
            '{"job": "etl", "status": "failed", "rows": 10, "started": "08:00", "host": "a"}',
            ResultStatus.OK,
        ),
        ('{"code": 404, "message": "no such user"}', ResultStatus.OK),
    ],
)
def test_result_status(text: str, status: ResultStatus) -> None:
    assert result_status(text) is status
