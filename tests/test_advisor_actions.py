"""Failure class 1: tools that change the world need a call for every request to do, redo or
confirm the action, however fresh their last result; questions about what was done are answered
from the result. Annotations (MCP hints) decide a tool's kind when given."""

from __future__ import annotations

from typing import Any

import pytest
from test_advisor_support import at, conversation, exchange, tool

from memory.temporal import ToolCallAdvisor
from memory.temporal.horizons import ToolSpec
from memory.temporal.tool_kinds import ToolKind, classify_tool

BOOK_TABLE = tool("book_table", "Reserve a restaurant table.", "restaurant", "time", "party_size")
SEND_EMAIL = tool("send_email", "Send an email to a recipient.", "to", "subject", "body")
TRANSFER = tool("transfer_funds", "Move money between the user's accounts.", "amount", "to")
ALLOCATE = tool("allocate_gpus", "Allocate GPUs to a training job.", "job_id", "count")
CREATE_EVENT = tool("create_event", "Create a calendar event.", "title", "start")
CANCEL_ORDER = tool("cancel_order", "Cancel an order.", "order_id")
ORDER_STATUS = tool("get_order_status", "Status of an order.", "order_id")


@pytest.mark.parametrize(
    ("spec", "request_", "arguments", "result", "follow_up"),
    [
        (
            BOOK_TABLE,
            "Book a table for 2 at Nora's at 7pm.",
            {"restaurant": "Nora's", "time": "19:00", "party_size": 2},
            {"status": "confirmed", "confirmation": "NR-5521"},
            "Book another table there for Friday at 8pm.",
        ),
        (
            SEND_EMAIL,
            "Email the report to Priya.",
            {"to": "priya@example.com", "subject": "Report"},
            {"status": "sent", "message_id": "m-88"},
            "Send it again, please, she didn't get it.",
        ),
        (
            TRANSFER,
            "Move 50 EUR to my savings.",
            {"amount": "50 EUR", "to": "savings"},
            {"status": "completed", "reference": "TX-301"},
            "Transfer another 50 to savings.",
        ),
        (
            ALLOCATE,
            "Give job J-7 four GPUs.",
            {"job_id": "J-7", "count": 4},
            {"allocated": 4, "job_id": "J-7"},
            "Allocate two more to J-7.",
        ),
        (
            CANCEL_ORDER,
            "Cancel order 4411.",
            {"order_id": "4411"},
            {"order_id": "4411", "status": "cancellation requested"},
            "Please confirm the cancellation of 4411.",
        ),
    ],
)
def test_requests_to_act_again_call_even_seconds_later(
    spec: dict[str, Any], request_: str, arguments: dict[str, Any], result: Any, follow_up: str
) -> None:
    messages = conversation(
        request_, spec["function"]["name"], arguments, result, "Done.", follow_up, 20
    )
    decision = ToolCallAdvisor().decide(messages, [spec])
    assert decision.call_tool, decision.reason
    assert decision.tool == spec["function"]["name"]
    assert decision.tool_kind == "action" and "action_tool" in decision.signals
    assert decision.reason_code in ("action_request", "freshness_request")


def test_a_yes_to_a_proposed_action_calls_it() -> None:
    def after_creating(follow_up: str, proposal: str | None = None) -> list[dict[str, Any]]:
        return conversation(
            "Put 'Team sync' on my calendar for Monday 10:00.",
            "create_event",
            {"title": "Team sync", "start": "2025-06-09T10:00"},
            {"id": "ev-12", "status": "created"},
            "Created 'Team sync' on Monday at 10:00.",
            follow_up,
            15,
            proposal=proposal,
        )

    proposal = "Shall I create the same event for next Monday too?"
    decision = ToolCallAdvisor().decide(after_creating("Yes, go ahead.", proposal), [CREATE_EVENT])
    assert decision.call_tool and decision.reason_code == "action_request"
    assert "affirmation" in decision.signals
    # The same "yes" without a proposal before it is not a request to act.
    assert not ToolCallAdvisor().decide(after_creating("ok thanks"), [CREATE_EVENT]).call_tool


@pytest.mark.parametrize("gap_s", [30, 3 * 86400])
def test_questions_about_what_an_action_did_answer_from_its_record(gap_s: float) -> None:
    messages = conversation(
        "Book a table for 2 at Nora's at 7pm.",
        "book_table",
        {"restaurant": "Nora's", "time": "19:00", "party_size": 2},
        {"status": "confirmed", "confirmation": "NR-5521", "restaurant": "Nora's"},
        "Booked: confirmation NR-5521.",
        "What was the confirmation number?",
        gap_s,
    )
    decision = ToolCallAdvisor().decide(messages, [BOOK_TABLE])
    assert not decision.call_tool and decision.reason_code == "action_record", decision.reason


def test_the_read_tool_answers_status_questions_and_the_action_tool_acts() -> None:
    tools = [CANCEL_ORDER, ORDER_STATUS]  # the action tool listed first on purpose
    base = conversation(
        "Where is order 4411?",
        "get_order_status",
        {"order_id": "4411"},
        {"order_id": "4411", "status": "packed"},
        "Order 4411 is packed.",
        "Cancel order 4411.",
        60,
    )
    act = ToolCallAdvisor().decide(base, tools)
    assert (act.tool, act.call_tool, act.reason_code) == ("cancel_order", True, "action_request")
    base[-1]["content"] = "What's the status of order 4411?"
    ask = ToolCallAdvisor().decide(base, tools)
    assert ask.tool == "get_order_status" and not ask.call_tool, ask.reason


def test_annotations_decide_the_kind_wherever_they_sit() -> None:
    sibling = tool("process_request", "Process a request.", "id")
    sibling["annotations"] = {"readOnlyHint": False, "destructiveHint": True}
    inside = tool("submit_report", "Submit a report.", "id", annotations={"readOnlyHint": True})
    mcp = {
        "name": "purge_cache",
        "description": "Purge the CDN cache.",
        "inputSchema": {"type": "object", "properties": {"zone": {"type": "string"}}},
        "annotations": {"readOnlyHint": False, "idempotentHint": True},
    }
    kinds = {
        spec.name: classify_tool(spec) for spec in map(ToolSpec.from_openai, (sibling, inside, mcp))
    }
    assert kinds["process_request"].kind is ToolKind.ACTION and kinds["process_request"].destructive
    assert kinds["submit_report"].kind is ToolKind.READ  # the hint beats the verb "submit"
    assert kinds["purge_cache"].kind is ToolKind.ACTION and kinds["purge_cache"].idempotent
    assert {k.source for k in kinds.values()} == {"annotations"}
    assert ToolSpec.from_openai(mcp).parameters["properties"] == {"zone": {"type": "string"}}


def test_annotated_action_tools_are_called_for_every_request() -> None:
    purge = {
        "name": "purge_cache",
        "description": "Purge the CDN cache of a zone.",
        "inputSchema": {"type": "object", "properties": {"zone": {"type": "string"}}},
        "annotations": {"readOnlyHint": False, "idempotentHint": True},
    }
    messages = [
        {"role": "user", "content": "Purge the cache for zone eu-1.", "time": at(0)},
        *exchange("purge_cache", {"zone": "eu-1"}, {"purged": True}, 1),
        {"role": "assistant", "content": "Purged eu-1.", "time": at(3)},
        {"role": "user", "content": "Purge it again, the old page still shows.", "time": at(40)},
    ]
    decision = ToolCallAdvisor().decide(messages, [purge])
    assert (
        decision.call_tool and "annotated" in decision.signals and "idempotent" in decision.signals
    )
    # A read-only hint makes the same verbs a lookup: a fresh covered result is answered from.
    read_only = dict(purge, annotations={"readOnlyHint": True})
    messages[-1]["content"] = "Was zone eu-1 purged?"
    assert not ToolCallAdvisor().decide(messages, [read_only]).call_tool


@pytest.mark.parametrize(
    ("name", "description", "kind"),
    [
        ("book_flight", "", ToolKind.ACTION),
        ("get_booking", "", ToolKind.READ),
        ("order_status", "", ToolKind.READ),
        ("order_pizza", "", ToolKind.ACTION),
        ("track_package", "", ToolKind.READ),
        ("calendar_create_event", "", ToolKind.ACTION),
        ("payments", "Charges a saved card.", ToolKind.ACTION),
        ("weather", "Returns today's weather.", ToolKind.READ),
        ("check_in_guest", "", ToolKind.ACTION),
        ("frobnicate", "Does a thing.", ToolKind.READ),
    ],
)
def test_kinds_from_names_and_descriptions(name: str, description: str, kind: ToolKind) -> None:
    assert classify_tool(ToolSpec(name=name, description=description)).kind is kind


def test_a_yes_to_a_proposed_lookup_reads_the_proposal() -> None:
    weather = tool("get_weather", "Current weather for a city.", "city")
    messages = conversation(
        "Weather in Paris?",
        "get_weather",
        {"city": "Paris"},
        {"city": "Paris", "temp_c": 17},
        "17 C in Paris.",
        "Yes please.",
        30,
        proposal="Want me to check Rome as well?",
    )
    decision = ToolCallAdvisor().decide(messages, [weather])
    assert decision.call_tool and decision.reason_code == "not_covered"
    assert "Rome" in decision.reason


def test_an_action_still_in_progress_is_aged_like_a_lookup() -> None:
    messages = conversation(
        "Transfer 500 EUR to Ana.",
        "transfer_funds",
        {"amount": "500 EUR", "to": "Ana"},
        {"status": "pending", "reference": "TX-77"},
        "The transfer is pending.",
        "Has the transfer to Ana gone through?",
        2 * 86400,
    )
    decision = ToolCallAdvisor().decide(messages, [TRANSFER])
    assert decision.call_tool and decision.reason_code == "past_horizon", decision.reason
    messages[3]["content"] = '{"status": "completed", "reference": "TX-77"}'
    done = ToolCallAdvisor().decide(messages, [TRANSFER])
    assert not done.call_tool and done.reason_code == "action_record", done.reason
