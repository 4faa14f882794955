"""Learned tool change rates survive the hook that learned them: kept in the store (both
backends), loaded by the next hook of the namespace, saved only when they moved, and a stored
state that is not one is ignored with a warning, never raised."""

from __future__ import annotations

import logging

import pytest

from kv_store import BaseStore
from memory.clock import SimClock
from services.agent_log import AgentEventLog
from services.hooks._core import HookCore
from services.learned_rates import RATES_KEY, StoredRates
from tests.test_advisor_support import tool

SPEC = tool("get_news_digest", "Latest news headlines digest.", "topic")


def _learning_session(store: BaseStore, session: str) -> HookCore:
    """A conversation in which the digest changed at every re-call, a minute apart."""
    clock = SimClock(1_000_000.0)
    event_log = AgentEventLog(store, session, clock=clock, embedder="lexical")
    core = HookCore(event_log, tools=[SPEC], learn=True)
    event_log.record_message({"role": "user", "content": "Tech news?"})
    for step in range(4):
        clock.advance(60.0)
        call = event_log.record_tool_call("get_news_digest", {"topic": "tech"})
        event_log.record_tool_result(call, {"items": [f"story {step}"]}, name="get_news_digest")
    clock.advance(300.0)
    event_log.record_message({"role": "user", "content": "What's in the tech news digest?"})
    return core


def test_what_one_session_learned_the_next_hook_loads(store: BaseStore) -> None:
    first = _learning_session(store, "s1")
    assert store.get_tensors(RATES_KEY) is None  # nothing learned yet, nothing written
    line = first.logged_time_line([SPEC])
    assert line is not None
    learned = first.advisor.rates.state_dict()
    assert learned["tools"]["get_news_digest"][2] == 3  # three re-calls observed
    tensors, meta = store.get_tensors(RATES_KEY) or ({}, {})
    assert tensors == {} and meta["rates"] == learned

    second = HookCore(AgentEventLog(store, "s2", embedder="lexical"), learn=True)
    assert second.advisor.rates.state_dict() == learned
    plain = HookCore(AgentEventLog(store, "s3", embedder="lexical"))  # learn=False: untouched
    assert plain.stored_rates is None
    assert plain.advisor.rates.state_dict()["tools"] == {}


def test_rates_are_written_only_when_they_moved(store: BaseStore) -> None:
    core = _learning_session(store, "s1")
    saver = core.stored_rates
    assert saver is not None
    core.logged_time_line([SPEC])
    assert not saver.save()  # re-deciding the same chat learns nothing new
    store.delete(RATES_KEY)
    core.logged_time_line([SPEC])
    assert store.get_tensors(RATES_KEY) is None


@pytest.mark.parametrize(
    "stored", [{"version": 99}, "not a dict", {"version": 1, "tools": {"t": [1, -2, 3]}}]
)
def test_a_stored_state_that_is_not_one_is_ignored_with_a_warning(
    store: BaseStore, stored: object, caplog: pytest.LogCaptureFixture
) -> None:
    store.put_tensors(RATES_KEY, {}, meta={"rates": stored})
    with caplog.at_level(logging.WARNING, logger="services.learned_rates"):
        core = HookCore(AgentEventLog(store, "s1", embedder="lexical"), learn=True)
    assert core.advisor.rates.state_dict()["tools"] == {}
    assert "ignored" in caplog.text
    assert StoredRates(store, core.advisor.rates).load() is False
