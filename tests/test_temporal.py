"""Temporal awareness for tool use: signals, horizons, coverage, advice, injection, evaluation."""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from memory.clock import SimClock, parse_timestamp
from memory.temporal import (
    CLASS_HORIZON_S,
    Decision,
    HorizonResolver,
    ToolCallAdvisor,
    ToolSpec,
    Volatility,
    always_call,
    check_coverage,
    elapsed_signals,
    evaluate,
    fixed_ttl,
    fresh_for,
    humanize_duration,
    inject_time,
    item_ages,
    load_trajectories,
    never_call,
)
from memory.temporal.horizons import stable_digest

DATA = Path(__file__).parent / "data" / "toolcall_trajectories.jsonl"
ADVISOR_FLOOR = 0.90  # measured 0.940 (lexicon only); a regression floor, not a target

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather conditions for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def weather_conversation(
    gap: str = "2025-10-11T09:00:00Z", request: str = "What's the weather in Paris?"
) -> list[dict[str, Any]]:
    """A weather exchange on 8 October at 09:00 UTC, then `request` at `gap`."""
    return [
        {"role": "system", "content": "You are helpful.", "time": "2025-10-08T08:59:00Z"},
        {"role": "user", "content": "What's the weather in Paris?", "time": "2025-10-08T09:00:00Z"},
        {
            "role": "assistant",
            "content": None,
            "time": "2025-10-08T09:00:01Z",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "name": "get_weather",
            "content": '{"city": "Paris", "temperature_c": 17, "conditions": "cloudy"}',
            "time": "2025-10-08T09:00:02+00:00",
        },
        {"role": "assistant", "content": "17 °C, cloudy.", "time": "2025-10-08T11:00:03+02:00"},
        {"role": "user", "content": request, "time": gap},
    ]


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "just now"),
        (1, "1 second"),
        (45, "45 seconds"),
        (125, "2 minutes 5 seconds"),
        (3600 + 300, "1 hour 5 minutes"),
        (3 * 86400, "3 days"),
        (12 * 86400 + 3600, "12 days"),
        (2 * 365 * 86400, "2 years"),
    ],
)
def test_humanize_duration(seconds: float, text: str) -> None:
    assert humanize_duration(seconds) == text


def test_signals_on_a_hand_built_timeline() -> None:
    messages = weather_conversation()
    signals = elapsed_signals(messages)
    start = parse_timestamp("2025-10-08T09:00:00Z")
    assert signals.now == parse_timestamp("2025-10-11T09:00:00Z")
    assert signals.since_message_s[1] == pytest.approx(3 * 86400)
    assert signals.since_last_user_s == 0.0  # the last message is the user's
    weather = signals.tools["get_weather"]
    assert weather.since_last_call_s == pytest.approx(signals.now - start - 1)
    assert weather.since_last_result_s == pytest.approx(signals.now - start - 2)
    assert weather.last_result_arguments == {"city": "Paris"}
    assert "cloudy" in (weather.last_result_content or "")
    assert "2 days 23 hours since the last get_weather result" in signals.lines()
    later = elapsed_signals(messages, now="2025-10-11T10:00:00Z")
    assert later.since_last_user_s == pytest.approx(3600)
    assert "1 hour since the last user message" in later.lines()


def test_signals_follow_a_sim_clock() -> None:
    messages = weather_conversation()
    clock = SimClock(parse_timestamp("2025-10-11T09:00:00Z"))
    first = elapsed_signals(messages, clock=clock)
    clock.advance(90)
    second = elapsed_signals(messages, clock=clock)
    assert second.since_last_user_s == pytest.approx(first.since_last_user_s + 90)  # type: ignore[operator]
    advisor = ToolCallAdvisor(clock=clock)
    assert advisor.decide(messages, [WEATHER_TOOL]).age_s == pytest.approx(
        second.tools["get_weather"].since_last_result_s
    )


def test_out_of_order_messages_are_held_and_named() -> None:
    messages = weather_conversation()
    messages[3]["time"] = "2025-10-08T08:00:00Z"
    signals = elapsed_signals(messages)
    assert signals.message_times[3] == signals.message_times[2]  # held, never backwards
    assert any("message 3 is earlier" in note for note in signals.notes), signals.notes


def test_naive_and_missing_timestamps_are_read_and_named() -> None:
    messages = weather_conversation()
    strict = elapsed_signals(messages)
    messages[2]["time"] = "2025-10-08T09:00:01"  # naive: read as UTC
    naive = elapsed_signals(messages)
    assert naive.message_times[2] == parse_timestamp("2025-10-08T09:00:01Z")
    assert any("message 2's time has no timezone" in note for note in naive.notes)
    del messages[2]["time"]  # missing: the neighbour's time
    missing = elapsed_signals(messages)
    assert missing.message_times[2] == strict.message_times[1]
    assert any("message 2 has no time" in note for note in missing.notes), missing.notes
    assert inject_time(messages)[0]["role"] == "system"  # and injection works on it


def test_a_chat_without_any_time_is_read_as_sent_now() -> None:
    messages = [{k: v for k, v in m.items() if k != "time"} for m in weather_conversation()]
    signals = elapsed_signals(messages, now="2025-10-11T09:00:00Z")
    assert set(signals.since_message_s) == {0.0}
    assert any("no message has a time" in note for note in signals.notes)
    with pytest.raises(ValueError, match="a chat is a list of messages"):
        elapsed_signals("not a chat")  # type: ignore[arg-type]


def test_tool_result_without_a_call_is_left_out_and_named() -> None:
    messages = weather_conversation()
    messages[3]["tool_call_id"] = "nope"
    signals = elapsed_signals(messages)
    assert signals.tools["get_weather"].last_result_index is None
    assert any("message 3: a tool result with tool_call_id 'nope'" in n for n in signals.notes)


def test_a_clock_going_backwards_is_held_at_the_last_message() -> None:
    messages = weather_conversation()
    signals = elapsed_signals(messages, now="2025-10-10T00:00:00Z")
    assert signals.now == signals.message_times[-1]
    assert any("clock went backwards" in note for note in signals.notes)
    # The advisor says so too.
    decision = ToolCallAdvisor(clock=SimClock(0.0)).decide(messages, [WEATHER_TOOL])
    assert "clock went backwards" in decision.reason and "clock_backwards" in decision.signals
    assert decision.age_s == pytest.approx(3 * 86400 - 2)


def test_item_ages() -> None:
    ages = item_ages({"a": "2025-01-01T00:00:00Z", "b": 1_735_689_540.0}, now=1_735_689_600.0)
    assert ages == {"a": pytest.approx(0.0), "b": pytest.approx(60.0)}
    with pytest.raises(ValueError, match=r"memory item 'a'.*no timezone"):
        item_ages({"a": "2025-01-01T00:00:00"}, now=0.0)
    with pytest.raises(ValueError, match="from the future"):
        item_ages({"a": 10.0}, clock=SimClock(5.0))


# ---------------------------------------------------------------- horizons


def test_declared_horizons() -> None:
    resolver = HorizonResolver()
    assert resolver.resolve(ToolSpec(name="anything", horizon_s=42)).horizon_s == 42
    extended = copy.deepcopy(WEATHER_TOOL)
    extended["function"]["x-horizon-s"] = 120
    declared = resolver.resolve(ToolSpec.from_openai(extended))
    assert (declared.horizon_s, declared.source) == (120, "declared")

    @fresh_for(5)
    def read_sensor(sensor_id: str) -> float:
        """Read a sensor."""
        return 0.0

    spec = ToolSpec.from_function(read_sensor)
    assert spec.horizon_s == 5 and spec.name == "read_sensor"
    assert "sensor_id" in spec.parameters["properties"]
    with pytest.raises(ValueError, match="finite and > 0"):
        fresh_for(0)
    with pytest.raises(ValueError, match="horizon_s"):
        ToolSpec(name="x", horizon_s=-1)
    with pytest.raises(ValueError, match="must be a dict"):
        ToolSpec.from_openai([])  # type: ignore[arg-type]


def test_declared_spec_overrides_the_same_named_tool() -> None:
    advisor = ToolCallAdvisor(tool_specs=[ToolSpec(name="get_weather", horizon_s=10 * 86400)])
    decision = advisor.decide(weather_conversation(), [WEATHER_TOOL])
    assert (decision.horizon_s, decision.horizon_source, decision.call_tool) == (
        10 * 86400,
        "declared",
        False,
    )


@pytest.mark.parametrize(
    ("name", "description", "params", "expected"),
    [
        ("get_btc_price", "Live bitcoin price.", ["symbol"], Volatility.REALTIME),
        ("robot_arm_state", "Joint position and speed telemetry.", ["arm"], Volatility.REALTIME),
        ("road_traffic", "Congestion on a road segment.", ["segment"], Volatility.MINUTES),
        ("fetch_headlines", "Top headlines from a newspaper.", ["paper"], Volatility.HOURS),
        ("bus_timetable", "Timetable of a bus line.", ["line"], Volatility.DAYS),
        ("lookup_statute", "Text of a law.", ["section"], Volatility.STATIC),
        ("frobnicate", "Does a thing.", ["x"], Volatility.MINUTES),  # no vote: the default
    ],
)
def test_inferred_horizons_of_undeclared_tools(
    name: str, description: str, params: list[str], expected: Volatility
) -> None:
    spec = ToolSpec(
        name=name,
        description=description,
        parameters={"type": "object", "properties": {p: {} for p in params}},
    )
    estimate = HorizonResolver().resolve(spec)
    assert estimate.volatility is expected
    assert estimate.source == ("default" if name == "frobnicate" else "lexicon")


def test_inferred_horizons_are_ordered_and_cached_by_a_stable_digest() -> None:
    resolver = HorizonResolver()
    horizons = [
        resolver.resolve(ToolSpec(name=n)).horizon_s
        for n in ("live_quote", "get_traffic", "get_news", "get_timetable", "define_word")
    ]
    assert horizons == sorted(horizons)
    assert horizons[0] == pytest.approx(CLASS_HORIZON_S[Volatility.REALTIME])
    reordered = {
        "function": dict(reversed(list(WEATHER_TOOL["function"].items()))),
        "type": "function",
    }
    assert stable_digest(reordered) == stable_digest(WEATHER_TOOL)
    assert ToolSpec.from_openai(WEATHER_TOOL).digest() == ToolSpec.from_openai(reordered).digest()
    assert ToolSpec(name="a").digest() != ToolSpec(name="a", description="b").digest()
    spec = ToolSpec.from_openai(WEATHER_TOOL)
    assert resolver.resolve(spec) is resolver.resolve(ToolSpec.from_openai(WEATHER_TOOL))


# ---------------------------------------------------------------- coverage


def test_coverage_needs_the_asked_for_field() -> None:
    result = '{"city": "Paris", "temperature_c": 17, "conditions": "cloudy"}'
    covered = check_coverage("How warm is it in Paris?", {"city": "Paris"}, result)
    assert covered.covered
    humidity = check_coverage("And the humidity in Paris?", {"city": "Paris"}, result)
    assert not humidity.covered and humidity.missing_fields == ("humidity",)


def test_coverage_needs_the_same_entity() -> None:
    result = '{"city": "Paris", "temperature_c": 17}'
    berlin = check_coverage("And in Berlin?", {"city": "Paris"}, result)
    assert not berlin.covered and berlin.unmatched_entities == ("Berlin",)
    assert check_coverage("Is it warm in PARIS?", {"city": "paris"}, result).covered  # case
    quote = '{"ticker": "AAPL", "price": 196.4}'
    assert check_coverage("What's aapl's price?", {"ticker": "AAPL"}, quote).covered
    assert not check_coverage("And MSFT?", {"ticker": "AAPL"}, quote).covered
    flight = check_coverage("Is UA901 delayed?", {"flight": "LH400"}, '{"status": "delayed"}')
    assert flight.unmatched_entities == ("UA901",)
    # a bare number after a parameter's name is an entity
    article = check_coverage("What does article 20 say?", {"article": "17"}, '{"text": "..."}')
    assert article.unmatched_entities == ("20",)
    # quoted terms are entities even in lower case
    assert not check_coverage("Define 'depreciation'.", {"term": "amortization"}, "{}").covered


def test_coverage_limitations_are_as_documented() -> None:
    # lower-case names are not recognised: the request counts as the same entity
    assert check_coverage("and in berlin?", {"city": "Paris"}, '{"city": "Paris"}').covered
    # an explicit request to look again is never covered
    assert not check_coverage("Check again please", {"city": "Paris"}, '{"city": "Paris"}').covered


# ---------------------------------------------------------------- advisor


def test_advisor_rule_on_simple_cases() -> None:
    advisor = ToolCallAdvisor()
    stale = advisor.decide(weather_conversation(), [WEATHER_TOOL])
    assert stale.call_tool and stale.tool == "get_weather" and stale.coverage is True
    assert stale.age_s == pytest.approx(3 * 86400 - 2)
    assert "past its" in stale.reason
    fresh = advisor.decide(weather_conversation("2025-10-08T09:05:00Z"), [WEATHER_TOOL])
    assert not fresh.call_tool and fresh.horizon_s is not None and fresh.age_s == 298
    uncovered = advisor.decide(
        weather_conversation("2025-10-08T09:05:00Z", "And the humidity?"), [WEATHER_TOOL]
    )
    assert uncovered.call_tool and uncovered.coverage is False
    first = advisor.decide(weather_conversation()[:2], [WEATHER_TOOL])
    assert first.call_tool and first.age_s is None and "no earlier" in first.reason
    assert advisor.decide(weather_conversation(), []).tool is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        stale.call_tool = False  # type: ignore[misc]
    # A chat without a user message is advice on nothing (a decision, not an error).
    nothing = advisor.decide(weather_conversation()[:1], [WEATHER_TOOL])
    assert not nothing.call_tool and nothing.tool is None and "no user message" in nothing.reason
    with pytest.raises(ValueError, match=r"not a chat|no messages"):
        advisor.decide([], [WEATHER_TOOL])


@pytest.fixture(scope="module")
def trajectories() -> list[Any]:
    return load_trajectories(DATA)


def test_labelled_set_is_broad(trajectories: list[Any]) -> None:
    assert len(trajectories) >= 60
    domains = {t.domain for t in trajectories}
    assert len(domains) >= 12
    assert {t.sensitivity for t in trajectories} == {"high", "medium", "low"}
    for domain in domains:
        gaps = {t.case for t in trajectories if t.domain == domain}
        assert {"same_small", "same_medium", "same_large"} <= gaps, domain


def test_advisor_beats_every_baseline_on_the_labelled_set(trajectories: list[Any]) -> None:
    advisor = ToolCallAdvisor()
    report = evaluate(trajectories, advisor.decide)
    baselines = {
        "always-call": evaluate(trajectories, always_call).alignment_rate,
        "never-call": evaluate(trajectories, never_call).alignment_rate,
        "30-min TTL": evaluate(trajectories, fixed_ttl()).alignment_rate,
    }
    print(f"\nadvisor alignment rate {report.alignment_rate:.3f}; baselines {baselines}")
    print("misses:", *report.misses, sep="\n  ")
    assert baselines["always-call"] == baselines["never-call"] == 0.5
    assert report.alignment_rate >= ADVISOR_FLOOR
    assert all(report.alignment_rate > rate for rate in baselines.values())
    again = [advisor.decide(t.messages, t.tools) for t in trajectories]
    assert again == [advisor.decide(t.messages, t.tools) for t in trajectories]  # deterministic


def test_decision_latency_is_measured(trajectories: list[Any]) -> None:
    """Printed, not asserted: timing belongs in benchmarks/bench_advisor.py."""
    advisor = ToolCallAdvisor()
    for t in trajectories:
        advisor.decide(t.messages, t.tools)
    times = []
    for t in trajectories * 3:
        start = time.perf_counter()
        advisor.decide(t.messages, t.tools)
        times.append(time.perf_counter() - start)
    print(f"\ndecision latency median {statistics.median(times) * 1e6:.1f} µs")


def test_load_trajectories_names_the_bad_line(tmp_path: Path) -> None:
    good = DATA.read_text().splitlines()[0]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        load_trajectories(bad_json)
    row = json.loads(good)
    row["sensitivity"] = "extreme"
    bad_field = tmp_path / "field.jsonl"
    bad_field.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"(?s)field.jsonl:1: .*sensitivity"):
        load_trajectories(bad_field)
    row = json.loads(good)
    row["messages"][1]["time"] = "2025-03-04T08:00:00"  # naive, and earlier ones missing: real logs
    del row["messages"][0]["time"]
    lenient = tmp_path / "lenient.jsonl"
    lenient.write_text(json.dumps(row) + "\n")
    assert len(load_trajectories(lenient)) == 1
    del row["messages"][-1]["time"]  # but the decision point needs its time
    untimed = tmp_path / "untimed.jsonl"
    untimed.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"(?s)untimed.jsonl:1: .*last message.*readable time"):
        load_trajectories(untimed)


# ---------------------------------------------------------------- injection


def test_injection_prefixes_times_and_never_mutates() -> None:
    messages = weather_conversation()
    snapshot = copy.deepcopy(messages)
    rewritten = inject_time(messages, advisor=ToolCallAdvisor(), tools=[WEATHER_TOOL])
    assert messages == snapshot
    assert len(rewritten) == len(messages) + 1
    assert rewritten[0]["content"] == "[2025-10-08 08:59:00 UTC, 3 days ago] You are helpful."
    system = rewritten[1]
    assert system["role"] == "system"
    assert "Current time: 2025-10-11 09:00:00 UTC." in system["content"]
    assert "since the last get_weather result" in system["content"]
    assert "Advice: call get_weather" in system["content"]
    assert rewritten[-1]["content"].startswith("[2025-10-11 09:00:00 UTC, just now] ")
    assert all("time" not in m for m in rewritten)
    assert (
        rewritten[3]["content"] is None and rewritten[3]["tool_calls"] == messages[2]["tool_calls"]
    )
    rewritten[3]["tool_calls"][0]["id"] = "changed"
    assert messages == snapshot  # deep copies, not shared nested dicts
    quiet = inject_time(
        weather_conversation("2025-10-08T09:01:00Z"),
        decision=Decision(False, "get_weather", 58.0, 3600.0, True, "fresh"),
        keep_time_field=True,
    )
    assert "Advice: answer directly" in quiet[1]["content"] and "time" in quiet[2]


# ---------------------------------------------------------------- embeddings (optional)


def test_embeddings_infer_horizons_where_the_lexicon_is_silent(minilm: Any) -> None:
    spec = ToolSpec(name="bed_readout", description="Blood oxygen of an ICU patient, per bed.")
    assert HorizonResolver().resolve(spec).source == "default"
    estimate = HorizonResolver(embedder=minilm).resolve(spec)
    assert estimate.source == "embedding" and estimate.volatility is Volatility.REALTIME
    statute = ToolSpec(name="civil_code_article", description="Wording of a civil code article.")
    assert HorizonResolver(embedder=minilm).resolve(statute).volatility is Volatility.STATIC


def test_advisor_with_embeddings_on_the_labelled_set(minilm: Any, trajectories: list[Any]) -> None:
    report = evaluate(trajectories, ToolCallAdvisor(embedder=minilm).decide)
    print(f"\nadvisor + MiniLM alignment rate {report.alignment_rate:.3f}")
    assert report.alignment_rate >= 0.85  # measured 0.940: embeddings do not help on this set
