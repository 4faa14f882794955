"""Failure class 5 and horizons from evidence: slow trackers keep for hours, published reference
data for weeks, live feeds only minutes; a stated update cadence is read; re-calls teach a
Gamma-Poisson change rate that replaces the prior, persisted as plain JSON."""

from __future__ import annotations

import json
import math
import random

import pytest
from test_advisor_support import Ask, ask_again, at, exchange, tool

from memory.temporal import (
    HorizonResolver,
    MiniLMEmbedder,
    ToolCallAdvisor,
    ToolSpec,
    Volatility,
)
from memory.temporal.rates import ChangeRateModel, Evidence, Interval

HOUR, DAY = 3600.0, 86400.0


@pytest.mark.parametrize(
    "ask",
    [
        (
            tool("track_shipment", "Tracking status and location of a shipment.", "tracking_id"),
            {"tracking_id": "1Z99"},
            {"tracking_id": "1Z99", "status": "in transit", "location": "Leipzig hub"},
            "Where is shipment 1Z99?",
            25 * 60,
        ),
        (
            tool("get_order_status", "Status of a customer order.", "order_id"),
            {"order_id": "O-5120"},
            {"order_id": "O-5120", "status": "processing"},
            "What's the status of O-5120?",
            12 * 60,
        ),
        (
            tool("visa_application_status", "Progress of a visa application.", "application_id"),
            {"application_id": "V-31"},
            {"application_id": "V-31", "stage": "under review"},
            "Where is application V-31 at?",
            40 * 60,
        ),
    ],
)
def test_trackers_of_slow_processes_keep_for_hours(ask: Ask) -> None:
    decision = ask_again(*ask)
    assert not decision.call_tool, decision.reason
    assert decision.horizon_s is not None and decision.horizon_s >= HOUR


@pytest.mark.parametrize(
    "ask",
    [
        (
            tool("get_api_reference", "Published API reference documentation of a library.", "lib"),
            {"lib": "pandas"},
            {"lib": "pandas", "function": "merge", "signature": "merge(left, right, how)"},
            "What does pandas merge's how argument do?",
            5 * DAY,
        ),
        (
            tool("lookup_isbn", "Bibliographic record of a book by ISBN.", "isbn"),
            {"isbn": "978-0-14-118776-1"},
            {"isbn": "978-0-14-118776-1", "title": "Middlemarch", "author": "George Eliot"},
            "Who wrote 978-0-14-118776-1?",
            30 * DAY,
        ),
        (
            tool(
                "get_public_holidays", "Public holidays of a country for a year.", "country", "year"
            ),
            {"country": "PT", "year": "2025"},
            {"country": "PT", "holidays": ["2025-04-25", "2025-06-10"]},
            "Which PT holidays fall in June?",
            10 * DAY,
        ),
    ],
)
def test_published_reference_data_keeps_for_weeks(ask: Ask) -> None:
    decision = ask_again(*ask)
    assert not decision.call_tool, decision.reason


@pytest.mark.parametrize(
    "ask",
    [
        (
            tool(
                "get_dock_availability", "Bikes and free docks at a bike-share station.", "station"
            ),
            {"station": "Kungsträdgården"},
            {"station": "Kungsträdgården", "bikes": 4, "docks": 11},
            "How many bikes at Kungsträdgården?",
            20 * 60,
        ),
        (
            tool("departure_board", "Live departure board of a station.", "station"),
            {"station": "Lyon Part-Dieu"},
            {"station": "Lyon Part-Dieu", "departures": [{"to": "Paris", "time": "10:04"}]},
            "When's the next one to Paris from Lyon Part-Dieu?",
            15 * 60,
        ),
        (
            tool("get_parking_occupancy", "Free spaces in a parking garage.", "garage"),
            {"garage": "P3"},
            {"garage": "P3", "free": 37},
            "How many free spaces in P3?",
            25 * 60,
        ),
        (
            tool("server_metrics", "CPU and memory usage of a server.", "host"),
            {"host": "db-2"},
            {"host": "db-2", "cpu_pct": 71, "mem_pct": 64},
            "What's the CPU on db-2?",
            10 * 60,
        ),
    ],
)
def test_live_feeds_are_called_after_tens_of_minutes(ask: Ask) -> None:
    decision = ask_again(*ask)
    assert decision.call_tool and decision.reason_code == "past_horizon", decision.reason


def test_a_stated_cadence_is_the_horizon() -> None:
    spec = tool("air_quality", "Air quality index of a city, updated every 10 minutes.", "city")
    assert (
        ask_again(spec, {"city": "Delhi"}, {"aqi": 180}, "AQI in Delhi?", 5 * 60).call_tool is False
    )
    late = ask_again(spec, {"city": "Delhi"}, {"aqi": 180}, "AQI in Delhi?", 12 * 60)
    assert late.call_tool and (late.horizon_s, late.horizon_source) == (600, "described")


def test_a_tracked_process_in_a_final_state_keeps() -> None:
    spec = tool("track_parcel", "Tracking status of a parcel.", "tracking_id")
    result = {"tracking_id": "Z9", "status": "delivered", "signed_by": "L. Costa"}
    decision = ask_again(spec, {"tracking_id": "Z9"}, result, "Who signed for Z9?", 2 * DAY)
    assert not decision.call_tool and "terminal_state" in decision.signals, decision.reason


# ---------------------------------------------------------------- learned change rates


def _simulate(rate_per_s: float, calls: int, mean_gap_s: float, seed: int) -> list[Interval]:
    """Re-calls of a tool whose result changes as a Poisson process at `rate_per_s`."""
    rng = random.Random(seed)
    intervals, t = [], 0.0
    for _ in range(calls):
        gap = rng.expovariate(1 / mean_gap_s)
        t += gap
        changed = rng.random() < 1 - math.exp(-rate_per_s * gap)
        intervals.append(Interval("queue_length", "{}", gap, changed, t))
    return intervals


@pytest.mark.parametrize(
    ("rate", "mean_gap_s"), [(1 / 600, 300.0), (1 / 60, 20.0), (1 / DAY, 4 * HOUR)]
)
def test_the_gamma_poisson_estimate_converges_to_the_true_rate(
    rate: float, mean_gap_s: float
) -> None:
    model = ChangeRateModel()
    assert model.record_all(_simulate(rate, 3000, mean_gap_s, seed=7)) == 3000
    evidence = model.evidence("queue_length", "{}")
    prior_far_off = 365 * DAY  # the evidence, not the prior, decides
    assert model.rate(evidence, prior_far_off) == pytest.approx(rate, rel=0.15)
    horizon = model.horizon(evidence, prior_far_off)
    assert horizon == pytest.approx(math.log(2) / rate, rel=0.2)  # P(changed) = 1/2


def test_without_evidence_there_is_no_learned_rate_and_a_little_moves_it_a_little() -> None:
    model = ChangeRateModel()
    assert model.evidence("t").observations == 0
    one_quiet = model.horizon(Evidence.of(120, changed=False), 30.0)
    assert 30 < one_quiet < 300  # one unchanged look after 2 min stretches a 30 s prior, a bit
    surprise = model.horizon(Evidence.of(60, changed=True), 365 * DAY)
    assert surprise < HOUR  # one change within a minute overturns a "static" prior


def test_re_calls_in_a_chat_teach_the_advisor() -> None:
    spec = tool("get_news_digest", "Latest news headlines digest.", "topic")  # prior: hours
    messages = [{"role": "user", "content": "Tech news?", "time": at(0)}]
    for step in range(4):  # the digest changed at every re-call, a minute apart
        messages += exchange(
            "get_news_digest", {"topic": "tech"}, {"items": [f"story {step}"]}, 60 * step
        )
    messages.append(
        {"role": "user", "content": "What's in the tech news digest?", "time": at(60 * 3 + 300)}
    )
    local = ToolCallAdvisor().decide(messages, [spec])
    assert local.call_tool and "horizon_learned" in local.signals, local.reason
    assert local.horizon_s is not None and local.horizon_s < 300
    # learn=True keeps the evidence: a later chat with one call uses it
    advisor = ToolCallAdvisor(learn=True)
    advisor.decide(messages, [spec])
    fresh_chat = [
        {"role": "user", "content": "Tech news?", "time": at(10 * DAY)},
        *exchange("get_news_digest", {"topic": "tech"}, {"items": ["x"]}, 10 * DAY + 1),
        {"role": "user", "content": "What's in the tech news digest?", "time": at(10 * DAY + 600)},
    ]
    assert advisor.decide(fresh_chat, [spec]).call_tool
    assert not ToolCallAdvisor().decide(fresh_chat, [spec]).call_tool  # the prior alone: hours
    # re-reading the same chat does not count its re-calls twice
    before = advisor.rates.evidence("get_news_digest")
    advisor.decide(messages, [spec])
    assert advisor.rates.evidence("get_news_digest") == before


def test_unchanged_re_calls_lengthen_a_short_prior() -> None:
    model = ChangeRateModel()
    for day in range(1, 6):  # a "live" tool that did not change in five daily looks
        model.record(Interval("get_live_rate", '{"pair":"X"}', DAY, False, day * DAY))
    evidence = model.evidence("get_live_rate", '{"pair":"X"}')
    assert model.horizon(evidence, 30.0) > HOUR


def test_per_argument_evidence_counts_more_than_other_arguments() -> None:
    model = ChangeRateModel(other_arguments_weight=0.5)
    model.record(Interval("quote", "A", 100, True, 100))
    model.record(Interval("quote", "B", 100, False, 100))
    assert model.evidence("quote", "A") == Evidence(1.0, 50.0, 1.0).plus(Evidence(0, 100, 1), 0.5)
    assert model.evidence("quote") == Evidence(1.0, 150.0, 2.0)


def test_state_dict_round_trip_is_plain_json() -> None:
    model = ChangeRateModel()
    model.record_all(_simulate(1 / 600, 50, 300, seed=3))
    model.record(Interval("other", '{"k": 1}', 42.0, False, 42.0))
    state = json.loads(json.dumps(model.state_dict()))
    again = ChangeRateModel()
    again.load_state_dict(state)
    for tool_name, key in (("queue_length", "{}"), ("other", '{"k": 1}')):
        assert again.evidence(tool_name, key) == model.evidence(tool_name, key)
    assert again.state_dict() == model.state_dict()
    assert not again.record(Interval("other", '{"k": 1}', 10.0, True, 40.0))  # seen before
    with pytest.raises(ValueError, match="version"):
        again.load_state_dict({"tools": {}})
    with pytest.raises(ValueError, match="finite"):
        again.load_state_dict({"version": 1, "tools": {"x": [1, "a", 1]}, "calls": {}})


def test_declared_horizons_are_not_overridden_by_learning() -> None:
    spec = tool(
        "get_news_digest", "Latest news headlines digest.", "topic", **{"x-horizon-s": 7200}
    )
    messages = [{"role": "user", "content": "Tech news?", "time": at(0)}]
    for step in range(3):
        messages += exchange(
            "get_news_digest", {"topic": "tech"}, {"items": [f"story {step}"]}, 60 * step
        )
    messages.append({"role": "user", "content": "What's in the tech news digest?", "time": at(600)})
    decision = ToolCallAdvisor().decide(messages, [spec])
    assert not decision.call_tool and decision.horizon_source == "declared"


# ---------------------------------------------------------------- semantic prototypes (MiniLM)


def test_prototypes_place_tools_the_lexicon_cannot(minilm: MiniLMEmbedder) -> None:
    resolver, lexicon = HorizonResolver(embedder=minilm), HorizonResolver()
    courier = ToolSpec(
        name="courier_lookup", description="Where a consignment is on its way to you."
    )
    bikes = ToolSpec(
        name="bike_count", description="How many bicycles stand at a street station at this moment."
    )
    rfc = ToolSpec(name="rfc_text", description="Text of an internet standard document.")
    for spec in (courier, bikes, rfc):
        assert lexicon.resolve(spec).source == "default"  # 10 minutes, whatever the tool
        assert resolver.resolve(spec).source == "embedding"
    assert resolver.resolve(courier).horizon_s >= HOUR
    assert resolver.resolve(bikes).horizon_s <= 30 * 60
    assert resolver.resolve(rfc).volatility is Volatility.STATIC
