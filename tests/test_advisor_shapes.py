"""Never raise on a chat: OpenAI, LangChain and Anthropic shapes, None content, arguments in
any form, missing ids and times, times going backwards; a ValueError only for what is not a
chat at all."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_advisor_support import at, conversation, tool

from memory.temporal import Decision, ToolCallAdvisor

WEATHER = tool("get_weather", "Current weather for a city.", "city")
RESULT = '{"city": "Oslo", "temp_c": 9, "conditions": "rain"}'


def _decide(messages: Any, tools: Any = (WEATHER,), **kwargs: Any) -> Decision:
    decision = ToolCallAdvisor().decide(messages, list(tools), **kwargs)
    assert isinstance(decision, Decision) and decision.reason
    return decision


def _openai(arguments: Any = '{"city": "Oslo"}', gap_s: float = 120) -> list[dict[str, Any]]:
    messages = conversation(
        "Weather in Oslo?",
        "get_weather",
        {"city": "Oslo"},
        RESULT,
        "9 C.",
        "Is it raining in Oslo?",
        gap_s,
    )
    messages[2]["tool_calls"][0]["function"]["arguments"] = arguments
    return messages


@pytest.mark.parametrize(
    "arguments",
    [
        '{"city": "Oslo"}',
        {"city": "Oslo"},
        "{'city': 'Oslo'}",
        "Oslo",
        None,
        "",
        "[1, 2]",
        "{'city': ",
    ],
)
def test_arguments_in_any_form(arguments: Any) -> None:
    decision = _decide(_openai(arguments))
    assert decision.tool == "get_weather" and decision.age_s == pytest.approx(120)
    if arguments in ('{"city": "Oslo"}', "{'city': 'Oslo'}") or isinstance(arguments, dict):
        assert not decision.call_tool  # the Python-literal dict reads like the JSON one


def test_missing_call_ids_pair_by_order_and_name() -> None:
    messages = _openai()
    del messages[2]["tool_calls"][0]["id"]
    del messages[3]["tool_call_id"]
    assert not _decide(messages).call_tool
    messages[3]["tool_call_id"] = "unknown-id"  # an id that matches nothing: paired by name
    assert not _decide(messages).call_tool


def test_none_content_and_parts() -> None:
    messages = _openai()
    messages[0]["content"] = None
    messages[4]["content"] = [{"type": "text", "text": "9 C and rain."}, {"type": "image_url"}]
    messages[-1]["content"] = [{"type": "text", "text": "Is it raining in Oslo?"}]
    assert not _decide(messages).call_tool


def test_missing_times_take_the_neighbours_and_say_so() -> None:
    messages = _openai()
    del messages[3]["time"]  # the result: takes its call's time
    decision = _decide(messages)
    assert "message 3 has no time" in decision.reason and "time_missing" in decision.signals
    assert decision.age_s == pytest.approx(121)
    del messages[-1]["time"]  # the request: now is the latest known time
    assert _decide(messages).age_s is not None


def test_no_times_at_all_decides_without_ages() -> None:
    messages = _openai()
    for message in messages:
        del message["time"]
    decision = _decide(messages)
    assert (
        decision.age_s is None
        and "without ages" in decision.reason
        and "no_times" in decision.signals
    )
    assert not decision.call_tool  # weather keeps longer than a turn or two
    live = tool("get_btc_price", "Live bitcoin price.", "pair")
    chat = conversation(
        "BTC?", "get_btc_price", {"pair": "BTC-USD"}, '{"price": 97000}', "97k.", "And BTC now?", 5
    )
    for message in chat:
        del message["time"]
    assert _decide(chat, [live]).call_tool  # a live price does not


def test_times_going_backwards_and_odd_times_do_not_raise() -> None:
    messages = _openai()
    messages[4]["time"] = at(-3600)  # earlier than the result before it
    decision = _decide(messages)
    assert "backwards" in decision.reason and "time_backwards" in decision.signals
    messages[4]["time"] = "2025-06-03T09:00:05"  # naive: read as UTC
    assert "no timezone" in _decide(messages).reason
    messages[4]["time"] = "yesterday-ish"
    assert "unreadable" in _decide(messages).reason
    messages[4]["time"] = 1748941205  # epoch seconds are fine
    assert _decide(messages).tool == "get_weather"
    backwards_now = _decide(_openai(), now="2020-01-01T00:00:00Z")
    assert "clock went backwards" in backwards_now.reason


def test_langchain_message_dicts() -> None:
    messages = [
        {"type": "system", "content": "Be brief.", "time": at(0)},
        {"type": "human", "content": "Weather in Oslo?", "time": at(1)},
        {
            "type": "ai",
            "content": "",
            "tool_calls": [
                {"name": "get_weather", "args": {"city": "Oslo"}, "id": "lc1", "type": "tool_call"}
            ],
            "time": at(2),
        },
        {
            "type": "tool",
            "content": RESULT,
            "tool_call_id": "lc1",
            "name": "get_weather",
            "time": at(3),
        },
        {"type": "ai", "content": "9 C and rain.", "time": at(4)},
        {"type": "human", "content": "Is it raining in Oslo?", "time": at(60)},
    ]
    assert not _decide(messages).call_tool
    serialised = [
        {"type": m["type"], "data": {k: v for k, v in m.items() if k != "type"}} for m in messages
    ]
    assert _decide(serialised).age_s == pytest.approx(57)
    messages[3]["status"] = "error"
    assert _decide(messages).reason_code == "retry_after_failure"


def test_anthropic_messages() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}], "time": at(0)},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "tu1", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
            "time": at(1),
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "tu1",
                    "content": [{"type": "text", "text": RESULT}],
                }
            ],
            "time": at(2),
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "9 C and rain."}],
            "time": at(3),
        },
        {"role": "user", "content": "Is it raining in Oslo?", "time": at(62)},
    ]
    anthropic_tool = {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    decision = _decide(messages, [anthropic_tool])
    assert not decision.call_tool and decision.age_s == pytest.approx(60)
    messages[2]["content"][0]["is_error"] = True
    messages[2] = copy.deepcopy(messages[2])  # edits below the top level come as a new dict
    assert _decide(messages, [anthropic_tool]).reason_code == "retry_after_failure"
    # a user turn holding only tool results is not the request
    assert _decide(messages[:3], [anthropic_tool]).reason_code == "retry_after_failure"


def test_openai_responses_items_and_legacy_function_calls() -> None:
    items = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather in Oslo?"}],
            "time": at(0),
        },
        {
            "type": "function_call",
            "call_id": "r1",
            "name": "get_weather",
            "arguments": '{"city": "Oslo"}',
            "time": at(1),
        },
        {"type": "function_call_output", "call_id": "r1", "output": RESULT, "time": at(2)},
        {"type": "message", "role": "user", "content": "Is it raining in Oslo?", "time": at(30)},
    ]
    assert not _decide(items).call_tool
    legacy = [
        {"role": "user", "content": "Weather in Oslo?", "time": at(0)},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": "{'city': 'Oslo'}"},
            "time": at(1),
        },
        {"role": "function", "name": "get_weather", "content": RESULT, "time": at(2)},
        {"role": "user", "content": "Is it raining in Oslo?", "time": at(30)},
    ]
    assert not _decide(legacy).call_tool


def test_tools_in_any_form_and_unreadable_ones_skipped() -> None:
    class LangChainLikeTool:
        name = "get_weather"
        description = "Current weather for a city."
        args_schema_json: ClassVar[dict[str, Any]] = {"type": "object", "properties": {"city": {}}}

    assert _decide(_openai(), [LangChainLikeTool()]).tool == "get_weather"
    decision = _decide(_openai(), [{"function": {"description": "no name"}}, WEATHER])
    assert decision.tool == "get_weather" and "tool_spec_unreadable" in decision.signals


def test_chats_without_a_request_or_a_tool_are_decisions() -> None:
    assert _decide([{"role": "system", "content": "hi"}]).reason_code == "no_request"
    assert _decide([{"role": "user", "content": "hello"}], []).reason_code == "no_tool"
    assert _decide([{"role": "user", "content": None}]).reason_code == "no_request"
    assert _decide([{"content": "weather in Oslo?"}]).tool == "get_weather"  # no role: the user's


@pytest.mark.parametrize(
    "not_a_chat", ["hello", {"role": "user", "content": "hi"}, [1, 2], [["user"]], [], None, 42]
)
def test_what_is_not_a_chat_is_a_value_error(not_a_chat: Any) -> None:
    with pytest.raises(ValueError, match=r"chat|message"):
        ToolCallAdvisor().decide(not_a_chat, [WEATHER])


_values = st.one_of(
    st.none(), st.text(max_size=12), st.integers(), st.lists(st.text(max_size=5), max_size=2)
)
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "image", "input_text"])},
    optional={
        "text": _values,
        "id": _values,
        "name": _values,
        "input": _values,
        "content": _values,
        "tool_use_id": _values,
    },
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(
            ["user", "assistant", "tool", "system", "human", "ai", "function", "x"]
        ),
        "type": st.sampled_from(
            ["human", "ai", "tool", "function_call", "function_call_output", "message"]
        ),
        "content": st.one_of(
            _values,
            st.lists(_part, max_size=3),
            st.dictionaries(st.text(max_size=5), _values, max_size=2),
        ),
        "time": st.one_of(
            st.none(),
            st.sampled_from([at(0), at(60), at(-60), "2025-06-03T09:00:00", "nope"]),
            st.integers(0, 2_000_000_000),
        ),
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": _values,
                    "function": st.fixed_dictionaries(
                        {}, optional={"name": _values, "arguments": _values}
                    ),
                    "name": _values,
                    "args": st.one_of(
                        _values, st.dictionaries(st.text(max_size=4), _values, max_size=2)
                    ),
                },
            ),
            max_size=2,
        ),
        "tool_call_id": _values,
        "name": _values,
        "call_id": _values,
        "output": _values,
        "arguments": _values,
        "status": st.sampled_from(["error", "success"]),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message, min_size=1, max_size=6))
def test_any_list_of_message_dicts_gets_a_decision(messages: list[dict[str, Any]]) -> None:
    _decide(messages)
