"""The rules added for general questions, recall, reasoning over shown data, "what about X?"
follow-ups and requests to act that name a tool by its verb. Conversations are written here by
hand for the rule they check (see test_advisor_support.py)."""

from __future__ import annotations

import pytest

from memory.temporal import ToolCallAdvisor, classify_tool
from memory.temporal.cues import read_request
from memory.temporal.horizons import as_tool_spec
from tests.test_advisor_support import conversation, tool

MINUTE, HOUR = 60.0, 3600.0
WEATHER = tool("get_weather", "Current weather conditions for a city.", "city")
WEATHER_CALL = ("get_weather", {"city": "Oslo"}, {"city": "Oslo", "temp_c": 4, "wind_kmh": 20})


def decide(follow_up: str, gap_s: float, tools: list | None = None, call=WEATHER_CALL):
    name, arguments, result = call
    messages = conversation("Weather?", name, arguments, result, "It is 4 C.", follow_up, gap_s)
    return ToolCallAdvisor().decide(messages, tools or [WEATHER])


@pytest.mark.parametrize(
    "question",
    [
        "What's a cold front?",
        "Why do clouds form over mountains?",
        "How does a barometer work?",
        "Any tips for cycling in the rain?",
        "Is it safe to run when it's icy?",
        "Help me write a message cancelling our picnic.",
        "What does 'wind chill' mean?",
    ],
)
def test_a_general_question_is_answered_whatever_the_age(question: str) -> None:
    decision = decide(question, 3 * HOUR)  # long past the weather's horizon
    assert not decision.call_tool, decision.reason
    assert decision.reason_code == "general_question"


@pytest.mark.parametrize(
    "question",
    [
        "Why is Oslo so windy today?",  # the live world ("today") and a cached argument
        "What's the current temperature?",  # "current"
        "Why is the wind so strong?",  # "the wind": about the data, not the world in general
    ],
)
def test_general_forms_about_the_live_world_are_not_general(question: str) -> None:
    assert decide(question, 3 * HOUR).reason_code != "general_question"


def test_recall_answers_from_the_record() -> None:
    decision = decide("Remind me what the wind was when we checked?", 2 * HOUR)
    assert not decision.call_tool and decision.reason_code == "recall", decision.reason


def test_reasoning_over_shown_data_has_a_grace_only_past_an_inferred_horizon() -> None:
    quote = tool("get_quote", "Live stock price, updated every second.", "symbol")
    call = ("get_quote", {"symbol": "ACME"}, {"symbol": "ACME", "price": 12.5})
    question = "How much would 10 of them be in total?"
    within = decide(question, 10 * MINUTE, [quote], call)  # past the live price's horizon
    assert not within.call_tool and "reasons over it" in within.reason, within.reason
    assert decide(question, 2 * HOUR, [quote], call).call_tool  # long stale
    declared = tool("get_quote", "Stock price.", "symbol", **{"x-horizon-s": 60})
    assert decide(question, 10 * MINUTE, [declared], call).call_tool  # declared: no grace
    assert not read_request("Open the vents to 60%.").derived  # an order, not a question


@pytest.mark.parametrize("follow_up", ["What about Bergen?", "And Tromsø?", "ok, how about Rome?"])
def test_what_about_a_new_subject_calls(follow_up: str) -> None:
    decision = decide(follow_up, 30.0)
    assert decision.call_tool and decision.reason_code == "not_covered", decision.reason


def test_what_about_a_subject_in_the_cached_exchange_is_covered() -> None:
    assert not decide("And Oslo?", 30.0).call_tool


def test_a_request_to_act_goes_to_a_tool_that_acts() -> None:
    slots = tool("appointment_slots", "Lists the free slots of a clinic.", "clinic")
    book = {
        **tool("appointments", "Create, reschedule or cancel an appointment.", "slot"),
        "annotations": {"readOnlyHint": False},
    }
    call = ("appointment_slots", {"clinic": "north"}, {"slots": ["Wed 15:20", "Thu 09:00"]})
    decision = decide("Book the Wednesday 15:20.", 20.0, [slots, book], call)
    assert decision.call_tool and decision.tool == "appointments", decision.reason
    assert classify_tool(as_tool_spec(book)).verbs >= {"create", "cancel"}


def test_a_tool_named_after_the_requested_verb_takes_the_request() -> None:
    search = tool("section_search", "Search course sections.", "term")
    enrol = tool("enrollment", "Student enrollment changes.", "section")
    call = ("section_search", {"term": "fall"}, {"sections": [{"id": "41823", "seats": 3}]})
    decision = decide("Enroll me in 41823.", 20.0, [search, enrol], call)
    assert decision.call_tool and decision.tool == "enrollment", decision.reason


@pytest.mark.parametrize(
    ("name", "kind"),
    [("class_schedule", "read"), ("schedule_meeting", "action"), ("user_create", "action")],
)
def test_a_noun_like_verb_at_the_end_of_a_name_does_not_make_an_action(
    name: str, kind: str
) -> None:
    spec = as_tool_spec(tool(name, "Group classes with spots remaining."))
    assert classify_tool(spec).kind.value == kind
