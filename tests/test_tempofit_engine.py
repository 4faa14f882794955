"""The one TempoFit step engine and TempoFit's multi-session state (tiny random LLaMA).

- ``policies.tempofit_state``: stacking single-session states into one batched state and
  splitting it back round-trips exactly, also through the memory's own load/save.
- ``policies.tempofit_engine.TempoFitEngine``: ``run_many`` (one batched forward) answers like
  ``run`` alone; the env runner (stateful ``step``) and the service's ``StepEngine`` (stateless
  ``run``, the state passed back each step) give identical answers over an episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from envs.frozen_policy import Frame
from envs.memory_runners import make_runner
from memory import TempoFitConfig
from policies import TempoFit, tiny_random_model
from policies.tempofit_engine import StepInput, TempoFitEngine
from policies.tempofit_state import memory_shape, split_state, stack_states, steps_pushed
from services.policy_worker import StepEngine
from services.schemas import StepRequest

CONFIG = TempoFitConfig(layers=[1, 2], capacity=3)
PREFIX = 6
CHOICES = [[3, 4], [9]]


def _ids(step: int, session: int = 0) -> list[int]:
    return [(5 * step + 3 * i + 11 * session) % 120 + 1 for i in range(PREFIX + 3)]


def _inputs(step: int, session: int = 0, choices: Any = None) -> StepInput:
    return StepInput(input_ids=_ids(step, session), prefix_len=PREFIX, choices=choices, top_k=5)


def _session_states(engine: TempoFitEngine, steps: list[int]) -> list[dict[str, Any]]:
    """One state per session: session b after ``steps[b]`` steps of its own tokens."""
    states = []
    for session, count in enumerate(steps):
        state: dict[str, Any] | None = None
        for step in range(count):
            _, state = engine.run(state, _inputs(step, session))
        assert state is not None
        states.append(state)
    return states


def _assert_same_state(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key
        else:
            assert actual[key] == value, key


# ------------------------------------------------------------------------------ state format


def test_stacking_then_splitting_session_states_round_trips_exactly() -> None:
    engine = TempoFitEngine(tiny_random_model(), CONFIG)
    counts = [5, 8, 11]  # capacity 3: every ring is full with its next slot at 2
    states = _session_states(engine, counts)
    assert len({memory_shape(state, CONFIG.layers) for state in states}) == 1

    batched = stack_states(states)
    assert batched is not None
    assert batched["batch_size"] == 3 and steps_pushed(batched) == max(counts)
    assert batched["layer.1.keys"].shape[0] == 3
    for b, state in enumerate(split_state(batched, counts)):
        _assert_same_state(state, states[b])

    # The batched state is one the memory itself accepts and gives back unchanged.
    memory = TempoFit(tiny_random_model(), CONFIG, batch_size=3)
    memory.load_state_dict(batched)
    for b, state in enumerate(split_state(memory.state_dict(), counts)):
        _assert_same_state(state, states[b])


def test_states_that_cannot_be_stacked_or_split_are_refused() -> None:
    engine = TempoFitEngine(tiny_random_model(), CONFIG)
    full, short = _session_states(engine, [5, 2])
    assert stack_states([None, None]) is None  # empty memories: nothing to load
    with pytest.raises(ValueError, match="at least one state"):
        stack_states([])
    with pytest.raises(ValueError, match="equal memory shape"):
        stack_states([full, short])
    batched = stack_states([full, full])
    assert batched is not None
    with pytest.raises(ValueError, match="equal memory shape"):
        stack_states([batched])  # already holds two sessions
    with pytest.raises(ValueError, match="holds 2 sessions, got 3 step counters"):
        split_state(batched, [5, 5, 5])


# ------------------------------------------------------------------------------ the engine


def test_run_many_in_one_forward_answers_like_each_session_alone() -> None:
    engine = TempoFitEngine(tiny_random_model(), CONFIG)
    states = _session_states(engine, [5, 8, 11])
    items: list[tuple[Any, StepInput]] = [
        (state, _inputs(20, session)) for session, state in enumerate(states)
    ]
    keys = {engine.batch_key(state, inputs) for state, inputs in items}
    assert len(keys) == 1 and None not in keys  # one group: one batched forward
    items.append((states[0], _inputs(20, 0, choices=CHOICES)))  # choices: runs alone
    items.append((states[1], StepInput(input_ids=[10**6], prefix_len=1)))  # outside the vocab

    results = engine.run_many(items, return_exceptions=True)

    assert isinstance(results[-1], ValueError) and "input_ids[0]" in str(results[-1])
    alone = TempoFitEngine(tiny_random_model(), CONFIG)
    for (state, inputs), result in zip(items[:-1], results[:-1], strict=True):
        expected, expected_state = alone.run(state, inputs)
        output, new_state = result
        assert output.frames_in_memory == expected.frames_in_memory == 3
        assert output.frames_after == expected.frames_after
        assert output.top_k_logits == pytest.approx(expected.top_k_logits, abs=1e-5)
        assert output.choice_scores == expected.choice_scores
        assert steps_pushed(new_state) == steps_pushed(state) + 1
        assert sorted(new_state) == sorted(expected_state)
        for key, value in expected_state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(new_state[key], value, atol=1e-5, rtol=0)
            else:
                assert new_state[key] == value, key


class _TokenPolicy:
    name = "tiny"

    def __init__(self) -> None:
        self.model = tiny_random_model()

    def frame(self, obs: int, info: dict[str, Any]) -> Frame:
        ids = _ids(obs)
        choices = CHOICES if obs % 2 else None
        return Frame(prefix_ids=ids[:PREFIX], suffix_ids=ids[PREFIX:], choices=choices)


def test_env_runner_and_service_engine_step_a_session_identically() -> None:
    """Both call sites of the one engine: the env runner keeps the memory in its engine, the
    service's ``StepEngine`` is handed the session's state each step (past capacity 3)."""
    policy = _TokenPolicy()
    runner = make_runner("tempofit", policy, config=CONFIG)
    service = StepEngine(tiny_random_model(), CONFIG)
    state: dict[str, Any] | None = None
    for step in range(6):
        frame = policy.frame(step, {})
        _, trace = runner.act(step, {})
        request = StepRequest(
            step_id=step,
            input_ids=frame.prefix_ids + frame.suffix_ids,
            prefix_len=PREFIX,
            choices=frame.choices,
        )
        output, state = service.run(state, request)
        assert trace.frames_in_memory == output.frames_in_memory == min(step, 3)
        assert trace.scores == output.choice_scores
        assert (trace.scores is None) == (step % 2 == 0)
    runner.close()
