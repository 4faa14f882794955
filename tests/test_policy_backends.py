"""Policy placement: an in-process engine steps a session exactly like the shared worker.

No Ray here: ``SessionActor`` is a plain class, so these tests run it in-process with
``WorkerSpec(placement="session")`` against a real redis-server. The Ray side (a killed
session actor with placement "session" restarting from the store) is in
``test_services_sessions.py``.
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import pytest
import torch

from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from policies import tiny_random_model
from services.policy_backends import (
    ActorPolicy,
    InlinePolicy,
    RemotePolicy,
    inline_runner,
    policy_backend,
)
from services.policy_worker import PolicyWorker, StepEngine, StepRunner, WorkerSpec
from services.schemas import SessionId, StepRequest
from services.session import SessionActor

CONFIG = TempoFitConfig(layers=[1, 2], capacity=3)
SPEC = WorkerSpec(model="tiny-llama", tempofit=CONFIG, placement="session")
PREFIX = 6


def _request(step: int) -> StepRequest:
    ids = [(5 * step + 3 * i) % 120 + 1 for i in range(PREFIX + 3)]
    return StepRequest(step_id=step, input_ids=ids, prefix_len=PREFIX, choices=[[3, 4], [9]])


def _answer(output: Any) -> tuple[list[int], list[float], list[float] | None]:
    return output.top_k_ids, output.top_k_logits, output.choice_scores


def test_engine_reusing_its_live_state_equals_reloading_a_copy() -> None:
    """The in-process shortcut (no reload of the state the engine holds) changes nothing."""
    live, reloading = StepEngine(tiny_random_model()), StepEngine(tiny_random_model())
    state_live: Any = None
    state_copy: Any = None
    for step in range(5):  # past capacity 3: the ring wraps
        out_live, state_live = live.run(state_live, _request(step))
        out_copy, state_copy = reloading.run(copy.deepcopy(state_copy), _request(step))
        assert _answer(out_live) == _answer(out_copy)
    for key, value in state_live.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state_copy[key]), key
        else:
            assert value == state_copy[key], key


def test_engine_switching_sessions_reloads_the_state_it_was_given() -> None:
    engine = StepEngine(tiny_random_model())
    a: Any = None
    b: Any = None
    alone = StepEngine(tiny_random_model())
    a_alone: Any = None
    for step in range(4):
        out_a, a = engine.run(a, _request(step))
        _, b = engine.run(b, _request(step + 7))  # another session in between
        out_alone, a_alone = alone.run(a_alone, _request(step))
        assert _answer(out_a) == _answer(out_alone)


def test_inline_backend_matches_the_shared_worker_bytes_path() -> None:
    inline = InlinePolicy(StepEngine(tiny_random_model(), CONFIG))
    worker = PolicyWorker(SPEC.model_copy(update={"placement": "shared"}))
    packed = ActorPolicy(handle=None)  # only its packing helpers are used here
    memory_inline: Any = None
    memory_bytes: bytes | None = None
    for step in range(4):
        out_inline, memory_inline = inline.step(memory_inline, _request(step), timeout_s=1)
        out_dict, memory_bytes = worker.step(memory_bytes, _request(step).model_dump())
        assert _answer(out_inline) == (
            out_dict["top_k_ids"],
            out_dict["top_k_logits"],
            out_dict["choice_scores"],
        )
    unpacked = packed.to_state(memory_bytes)
    assert unpacked is not None
    assert packed.to_state(packed.from_state(unpacked)) is not None
    for key, value in inline.to_state(memory_inline).items():  # type: ignore[union-attr]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, unpacked[key]), key


def test_inline_runner_takes_a_ready_runner_or_builds_an_engine() -> None:
    class Echo:
        def run(self, state: Any, request: StepRequest) -> Any:
            raise AssertionError("not called")

    echo = Echo()
    assert inline_runner(SPEC, factory=lambda: echo) is echo
    assert isinstance(echo, StepRunner)
    built = inline_runner(SPEC, factory=tiny_random_model)
    assert isinstance(built, StepEngine) and built.config == CONFIG
    backend = policy_backend(SPEC, ray_namespace="unused", factory=tiny_random_model)
    assert isinstance(backend, InlinePolicy)


def test_in_process_session_restores_from_redis_and_continues_identically(
    redis_server: LocalRedisServer,
) -> None:
    """Placement "session": the session's memory is written to Redis as a state dict and a new
    actor incarnation (same id) restores it and answers like one that never stopped."""
    session = SessionId(kind="robot", namespace=f"t{uuid.uuid4().hex[:8]}", id="arm")
    store = {"url": redis_server.url}
    config = {"max_lag_steps": 0}
    first = SessionActor(session, store=store, worker=SPEC, config=config)
    steady = SessionActor(
        SessionId(kind="robot", namespace=session.namespace, id="steady"),
        store=store,
        worker=SPEC,
        config=config,
    )
    for step in range(4):
        answer = first.step(_request(step).model_dump())
        assert answer["committed"]
        steady.step(_request(step).model_dump())
    second = SessionActor(session, store=store, worker=SPEC, config=config)
    assert second.restored and second.summary()["frames_in_memory"] == 3
    for step in (4, 5):
        restarted, uninterrupted = (
            second.step(_request(step).model_dump()),
            steady.step(_request(step).model_dump()),
        )
        assert restarted["top_k_ids"] == uninterrupted["top_k_ids"]
        assert restarted["top_k_logits"] == pytest.approx(uninterrupted["top_k_logits"], abs=1e-6)
        assert restarted["choice_scores"] == pytest.approx(uninterrupted["choice_scores"], abs=1e-6)


class _HungPolicy(RemotePolicy):
    """A remote policy that never answers: each wait uses up the time it is given."""

    def __init__(self) -> None:
        super().__init__(handle=None)
        self.waits: list[float] = []

    def _submit(self, memory: bytes | None, request: StepRequest) -> Any:
        return request.step_id

    def _wait(self, pending: Any, timeout_s: float) -> Any:
        self.waits.append(timeout_s)
        time.sleep(timeout_s)
        raise TimeoutError(f"step {pending}: no answer within {timeout_s:.3f} s")


def test_a_hung_remote_policy_costs_one_timeout_per_batch_not_one_per_step() -> None:
    policy = _HungPolicy()
    results = policy.step_many([(None, _request(step)) for step in range(5)], timeout_s=0.2)
    assert all(isinstance(r, TimeoutError) for r in results)
    assert len(policy.waits) == 5 and sum(policy.waits) <= 0.2
