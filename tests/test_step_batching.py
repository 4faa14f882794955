"""Batched steps: ``StepBatcher`` coalesces concurrent steps, ``SessionHost.step_many`` answers
them with one forward and exactly what ``step`` answers one by one."""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kv_store import RedisStore
from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from services.policy_worker import WorkerSpec
from services.schemas import SessionId, SessionLimitReached, StepConflict
from services.session import SessionConfig, StoreSpec
from services.session_host import HostSpec, SessionHost
from services.step_batcher import StepBatcher

WORKER = WorkerSpec(
    model="tiny-llama",
    tempofit=TempoFitConfig(layers=[1, 2], capacity=4),
    placement="session",
)
PREFIX = 8


# ------------------------------------------------------------------------------ the batcher


class _Recorder:
    """A ``send`` that answers ``item * 10`` (or raises for a negative item) and records the
    batches it got; each call yields to the loop, like a real remote call."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[Any]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_a_lone_step_goes_alone_and_a_burst_shares_one_call() -> None:
    async def scenario() -> tuple[list[Any], _Recorder]:
        send = _Recorder()
        batcher = StepBatcher(send)
        lone = await batcher.submit(1)
        burst = await asyncio.gather(*(batcher.submit(i) for i in range(2, 10)))
        return [lone, *burst], send

    results, send = asyncio.run(scenario())
    assert results == [i * 10 for i in range(1, 10)]
    assert send.batches == [[1], list(range(2, 10))]


def test_steps_arriving_during_a_call_go_in_the_next_one_capped_at_max_batch() -> None:
    async def scenario() -> _Recorder:
        send = _Recorder()
        batcher = StepBatcher(send, max_batch=3)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.002)  # the first call is in flight now
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 8)]
        assert await first == 0
        assert await asyncio.gather(*later) == [i * 10 for i in range(1, 8)]
        return send

    send = asyncio.run(scenario())
    assert send.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]


def test_an_item_error_stays_with_its_item_and_a_failed_call_fails_its_items() -> None:
    async def scenario() -> list[Any]:
        batcher = StepBatcher(_Recorder())
        return await asyncio.gather(
            *(batcher.submit(i) for i in (1, -2, 3)), return_exceptions=True
        )

    one, bad, three = asyncio.run(scenario())
    assert (one, three) == (10, 30)
    assert isinstance(bad, ValueError) and "bad -2" in str(bad)

    async def broken(items: list[int]) -> list[Any]:
        raise ConnectionError("host gone")

    async def failing() -> list[Any]:
        batcher = StepBatcher(broken)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(e, ConnectionError) for e in asyncio.run(failing()))

    async def short(items: list[int]) -> list[Any]:
        return items[:-1]  # a wrong count of results is an error, not a silent mix-up

    async def miscounted() -> list[Any]:
        batcher = StepBatcher(short)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) for e in asyncio.run(miscounted()))
    with pytest.raises(ValueError, match="max_batch"):
        StepBatcher(short, max_batch=0)


def test_a_host_that_stops_answering_gets_a_bounded_queue() -> None:
    """Steps for a hung host wait (their callers time out); past ``max_pending`` waiting steps
    a new one is refused at once with ``ConnectionError``, and freed places are reused."""

    async def scenario() -> None:
        hang = asyncio.Event()

        async def hung(items: list[int]) -> list[Any]:
            await hang.wait()
            return [i * 10 for i in items]

        batcher = StepBatcher(hung, max_batch=2, max_pending=4)
        first = asyncio.ensure_future(batcher.submit(0))  # in flight, never answered
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
        await asyncio.sleep(0.01)
        with pytest.raises(ConnectionError, match="4 steps already wait"):
            await batcher.submit(5)
        waiting[0].cancel()  # its caller gave up: its place is free again
        await asyncio.sleep(0)
        late = asyncio.ensure_future(batcher.submit(6))
        await asyncio.sleep(0.01)
        assert not late.done()
        hang.set()
        assert await first == 0
        assert await asyncio.gather(*waiting[1:], late) == [20, 30, 40, 60]

    asyncio.run(scenario())


# ------------------------------------------------------------------------------ the host


def _host() -> SessionHost:
    return SessionHost(
        0,
        store=StoreSpec(url="local"),
        worker=WORKER,
        config=SessionConfig(),
        host=HostSpec(idle_evict_s=None),
    )


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[SessionHost, SessionHost]]:
    yield _host(), _host()


def _session(name: str) -> dict[str, Any]:
    return SessionId(kind="robot", namespace="batching", id=name).model_dump(mode="json")


def _request(step: int, salt: int, **extra: Any) -> dict[str, Any]:
    ids = [(7 * step + 3 * i + 11 * salt) % 120 + 1 for i in range(PREFIX + 4)]
    return {"step_id": step, "input_ids": ids, "prefix_len": PREFIX, **extra}


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["top_k_ids"] == b["top_k_ids"]
    assert all(
        math.isclose(x, y, abs_tol=1e-4)
        for x, y in zip(a["top_k_logits"], b["top_k_logits"], strict=True)
    )
    for field in ("step_id", "session_id", "frames_in_memory", "degraded", "episode"):
        assert a[field] == b[field], field


def _forwards(host: SessionHost) -> list[int]:
    counter = [0]
    model = host._policy.runner.model  # type: ignore[attr-defined]
    model.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    return counter


def test_step_many_answers_what_steps_one_by_one_answer_in_one_forward(
    hosts: tuple[SessionHost, SessionHost],
) -> None:
    alone, batched = hosts
    names = [f"same-{i}" for i in range(5)]
    forwards = _forwards(batched)
    per_tick = []
    for step in range(7):
        expected = [alone.step(_session(n), _request(step, i)) for i, n in enumerate(names)]
        before = forwards[0]
        got = batched.step_many([(_session(n), _request(step, i)) for i, n in enumerate(names)])
        per_tick.append(forwards[0] - before)
        for a, b in zip(expected, got, strict=True):
            assert isinstance(b, dict), b
            _same(a, b)
    # Memories of equal shape share one forward; they differ only while the rings fill up
    # (every session here fills alike), so every tick is one forward.
    assert per_tick == [1] * 7, per_tick
    assert batched.read(_session(names[0]), "summary")["frames_in_memory"] == 4


def test_step_many_keeps_each_items_error_and_replay_in_its_place(
    hosts: tuple[SessionHost, SessionHost],
) -> None:
    _, host = hosts
    a, b, c = (_session(f"mixed-{x}") for x in "abc")
    first = host.step_many([(a, _request(0, 1)), (b, _request(0, 2)), (c, _request(0, 3))])
    assert all(isinstance(r, dict) for r in first)
    results = host.step_many(
        [
            (a, _request(0, 1)),  # the same step id and body again: replayed
            (b, _request(0, 9)),  # the same step id, another body: a conflict
            (c, _request(1, 3, input_ids=[1, 10**6], prefix_len=1)),  # outside the vocab
            ({"kind": "robot", "namespace": "batching", "id": "bad id!"}, _request(0, 0)),
            (a, _request(1, 1)),
        ]
    )
    replayed, conflict, vocab, bad_id, fresh = results
    assert isinstance(replayed, dict) and replayed["replayed"] is True
    assert replayed["top_k_ids"] == first[0]["top_k_ids"]  # type: ignore[index]
    assert isinstance(conflict, StepConflict)
    assert isinstance(vocab, ValueError) and "vocab" in str(vocab)
    assert isinstance(bad_id, ValueError) and "id" in str(bad_id)
    assert isinstance(fresh, dict) and fresh["step_id"] == 1 and fresh["frames_in_memory"] == 1
    # Nothing was applied for the failed items: c still takes step 1.
    assert host.step(c, _request(1, 3))["frames_in_memory"] == 1


def test_a_session_named_twice_in_one_call_runs_its_steps_in_order(
    hosts: tuple[SessionHost, SessionHost],
) -> None:
    alone, batched = hosts
    twice = _session("twice")
    expected = [alone.step(twice, _request(s, 4)) for s in range(3)]
    got = batched.step_many([(twice, _request(s, 4)) for s in range(3)])
    for a, b in zip(expected, got, strict=True):
        assert isinstance(b, dict), b
        _same(a, b)
    assert [r["frames_in_memory"] for r in got] == [0, 1, 2]  # type: ignore[index]


def test_a_linger_lets_steps_that_arrive_soon_after_share_the_call() -> None:
    async def scenario(linger_s: float) -> list[list[int]]:
        send = _Recorder()
        batcher = StepBatcher(send, linger_s=linger_s)

        async def late(item: int) -> Any:
            await asyncio.sleep(0.005)
            return await batcher.submit(item)

        assert await asyncio.gather(batcher.submit(1), late(2)) == [10, 20]
        return send.batches

    assert asyncio.run(scenario(0.0)) == [[1], [2]]
    assert asyncio.run(scenario(0.05)) == [[1, 2]]
    with pytest.raises(ValueError, match="linger_s"):
        StepBatcher(_Recorder(), linger_s=-1.0)


def test_the_tenant_cap_holds_for_sessions_not_yet_written_to_the_store() -> None:
    """A new session's first record is written before the tenant's sessions are counted:
    neither a batch of new sessions nor a quick run of them one by one gets past the cap."""
    host = SessionHost(
        0,
        store=StoreSpec(url="local"),
        worker=WORKER,
        config=SessionConfig(),
        host=HostSpec(idle_evict_s=None, max_sessions_per_namespace=3),
    )

    def tenant(namespace: str, name: str) -> dict[str, Any]:
        return SessionId(kind="robot", namespace=namespace, id=name).model_dump(mode="json")

    batch = host.step_many([(tenant("capped-a", f"s{i}"), _request(0, i)) for i in range(6)])
    assert [isinstance(r, dict) for r in batch] == [True] * 3 + [False] * 3
    assert all(isinstance(r, SessionLimitReached) for r in batch[3:])
    one_by_one = []
    for i in range(6):
        try:
            one_by_one.append(host.step(tenant("capped-b", f"s{i}"), _request(0, i)))
        except SessionLimitReached as err:
            one_by_one.append(err)
    assert [isinstance(r, dict) for r in one_by_one] == [True] * 3 + [False] * 3
    # A session that exists keeps stepping at the cap.
    assert host.step(tenant("capped-a", "s0"), _request(1, 0))["step_id"] == 1


def test_the_tenant_cap_holds_for_new_sessions_racing_on_two_hosts(
    redis_server: LocalRedisServer,
) -> None:
    """Two hosts sharing a redis store, twelve new sessions of one tenant created at once
    (a barrier), six per host, under a cap of 3: at most 3 are admitted (each host used to
    count only the records already written, and its own unwritten sessions, so each let
    about three in). Racers may all be refused; new ones one by one then fill the cap
    exactly, and every admitted session has its record."""
    namespace = f"race-{uuid.uuid4().hex[:6]}"
    store = StoreSpec(url=redis_server.url)
    hosts = [
        SessionHost(
            index,
            store=store,
            worker=WORKER,
            config=SessionConfig(),
            host=HostSpec(hosts=2, idle_evict_s=None, max_sessions_per_namespace=3),
        )
        for index in range(2)
    ]
    barrier = threading.Barrier(12)
    admitted: list[str] = []

    def create(i: int) -> None:
        session = SessionId(kind="robot", namespace=namespace, id=f"s{i}")
        barrier.wait(timeout=60)
        try:
            hosts[i % 2].step(session.model_dump(mode="json"), _request(0, i))
        except SessionLimitReached:
            return
        admitted.append(session.id)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(admitted) <= 3, admitted
    for i in range(12, 20):  # one by one: the cap fills exactly
        create_alone = SessionId(kind="robot", namespace=namespace, id=f"s{i}")
        try:
            hosts[i % 2].step(create_alone.model_dump(mode="json"), _request(0, i))
            admitted.append(create_alone.id)
        except SessionLimitReached:
            pass
    assert len(admitted) == 3, admitted
    records = RedisStore(redis_server.url, namespace=namespace).keys(prefix="session/robot/")
    assert sorted(records) == sorted(f"session/robot/{name}" for name in admitted)
