"""Failure class 4: follow-ups the cached result answers by reasoning (a time to compare with
its ETA, an item of a listed result) are answered directly; a new entity or a missing field
still calls."""

from __future__ import annotations

from typing import Any

import pytest
from test_advisor_support import conversation, tool

from memory.temporal import MiniLMEmbedder, ToolCallAdvisor, check_coverage

DELIVERY = tool(
    "track_delivery", "Where a food or parcel delivery is and when it arrives.", "order_id"
)
JOB = tool("get_job_status", "State and progress of a batch job.", "job")
FLIGHTS = tool("search_flights", "Search flights between two airports.", "origin", "destination")
HOTELS = tool("search_hotels", "Hotels in a city with price and rating.", "city")
TRAINS = tool("get_departures", "Next train departures from a station.", "station")


@pytest.mark.parametrize(
    ("spec", "arguments", "result", "follow_up"),
    [
        (
            DELIVERY,
            {"order_id": "A-77"},
            {"order_id": "A-77", "status": "out for delivery", "eta": "2025-06-03T16:30:00+02:00"},
            "Will it arrive before 6pm?",
        ),
        (
            DELIVERY,
            {"order_id": "A-77"},
            {"order_id": "A-77", "status": "in transit", "estimated_delivery": "2025-06-05"},
            "Will it be delivered by Friday?",
        ),
        (
            JOB,
            {"job": "nightly-etl"},
            {"job": "nightly-etl", "state": "running", "progress": 0.62, "eta": "14:40"},
            "Will it be done by 3 PM?",
        ),
        (
            FLIGHTS,
            {"origin": "AMS", "destination": "LIS"},
            [
                {"flight": "KL1691", "departs": "07:10", "price_eur": 189},
                {"flight": "TP663", "departs": "12:35", "price_eur": 142},
            ],
            "Which one is the cheapest?",
        ),
        (
            FLIGHTS,
            {"origin": "AMS", "destination": "LIS"},
            [
                {"flight": "KL1691", "departs": "07:10", "price_eur": 189},
                {"flight": "TP663", "departs": "12:35", "price_eur": 142},
            ],
            "What time does the 2nd one leave?",
        ),
        (
            HOTELS,
            {"city": "Porto"},
            {
                "hotels": [
                    {"name": "Casa Azul", "price_eur": 98, "rating": 4.6},
                    {"name": "Ribeira Inn", "price_eur": 121, "rating": 4.2},
                ]
            },
            "Is Casa Azul rated higher than Ribeira Inn?",
        ),
        (
            TRAINS,
            {"station": "Utrecht Centraal"},
            {
                "departures": [
                    {"to": "Amsterdam", "time": "10:04"},
                    {"to": "Arnhem", "time": "10:11"},
                ]
            },
            "Is there a train to Arnhem before 10:30?",
        ),
    ],
)
def test_follow_ups_answered_by_reasoning_over_the_result(
    spec: dict[str, Any], arguments: dict[str, Any], result: Any, follow_up: str
) -> None:
    name = spec["function"]["name"]
    messages = conversation("First ask.", name, arguments, result, "Here you go.", follow_up, 120)
    decision = ToolCallAdvisor().decide(messages, [spec])
    assert not decision.call_tool and decision.coverage is True, decision.reason


@pytest.mark.parametrize(
    ("follow_up", "why"),
    [
        ("And from AMS to OPO?", "OPO"),  # a new entity
        ("Which one has free baggage?", "baggage"),  # a field the list lacks
        ("Any flights on Saturday instead?", "Saturday"),  # a day not compared with anything
    ],
)
def test_what_the_result_cannot_answer_still_calls(follow_up: str, why: str) -> None:
    result = [
        {"flight": "KL1691", "departs": "07:10", "price_eur": 189},
        {"flight": "TP663", "departs": "12:35", "price_eur": 142},
    ]
    messages = conversation(
        "Flights AMS to LIS?", "search_flights", {"origin": "AMS", "destination": "LIS"},
        result, "Two options.", follow_up, 60,
    )  # fmt: skip
    decision = ToolCallAdvisor().decide(messages, [FLIGHTS])
    assert decision.call_tool and decision.reason_code == "not_covered", decision.reason
    assert why in decision.reason


def test_an_older_result_of_the_same_tool_can_cover_the_request() -> None:
    messages = conversation(
        "Weather in Oslo?", "get_weather", {"city": "Oslo"}, {"city": "Oslo", "temp_c": 9},
        "9 C in Oslo.", "placeholder", 0,
    )[:-1]  # fmt: skip
    messages += conversation(
        "And Bergen?", "get_weather", {"city": "Bergen"}, {"city": "Bergen", "temp_c": 11},
        "11 C in Bergen.", "How warm was Oslo again?", 200,
    )[1:]  # fmt: skip
    for index, message in enumerate(messages):  # the second exchange comes after the first
        if index >= 5:
            message["time"] = message["time"].replace("09:0", "09:1")
    messages[6]["tool_calls"][0]["id"] = messages[7]["tool_call_id"] = "second"
    weather = tool("get_weather", "Current weather for a city.", "city")
    decision = ToolCallAdvisor().decide(messages, [weather])
    assert not decision.call_tool and decision.coverage is True, decision.reason


def test_quantities_ordinals_and_clock_times_are_not_entities() -> None:
    result = '[{"name": "A", "price": 10}, {"name": "B", "price": 12}]'
    for request in ("Is the 2nd one under 20EUR?", "Can I get there in 15min?", "By 6pm?"):
        coverage = check_coverage(request, {"q": "x"}, result)
        assert coverage.unmatched_entities == (), (request, coverage)


def test_meaning_matches_what_words_miss(minilm: MiniLMEmbedder) -> None:
    hotel = '{"name": "Casa Azul", "car_park": "free", "price_eur": 98}'
    lexical = check_coverage("Is there parking?", {"city": "Porto"}, hotel)
    assert not lexical.covered and lexical.missing_fields == ("parking",)
    by_meaning = check_coverage("Is there parking?", {"city": "Porto"}, hotel, embedder=minilm)
    assert by_meaning.covered and any("meaning" in note for note in by_meaning.notes)
    assert not check_coverage(
        "Does it have a pool?", {"city": "Porto"}, hotel, embedder=minilm
    ).covered
    rooms = '{"city": "New York", "rooms": 3}'
    assert not check_coverage("Any rooms in NYC?", {"city": "New York"}, rooms).covered
    assert check_coverage("Any rooms in NYC?", {"city": "New York"}, rooms, embedder=minilm).covered
    assert not check_coverage(
        "Any in Boston?", {"city": "New York"}, rooms, embedder=minilm
    ).covered
