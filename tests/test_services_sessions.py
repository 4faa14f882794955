"""Sessions on session hosts on a real Ray cluster and a real redis-server.

One Ray instance for the module (``ray.init(num_cpus=2, include_dashboard=False)``, shut down
at the end). Sessions share one ``PolicyWorker`` actor hosting a tiny random LLaMA, so the
model is loaded once; each test kills the session hosts when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
import ray

from kv_store import RedisStore
from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from services.client import AsyncRayTransport, AsyncTempomemClient, RayTransport, TempomemClient
from services.policy_worker import WorkerSpec
from services.schemas import SessionId, StepRequest, StepResponse
from services.session import SessionConfig, StoreSpec
from services.session_host import HostSpec

RAY_NAMESPACE = f"tempomem-test-{uuid.uuid4().hex[:8]}"
WORKER = WorkerSpec(model="tiny-llama", tempofit=TempoFitConfig(layers=[1, 2], capacity=4))
PREFIX = 8
CHOICES = [[3, 4], [5], [6, 7, 8]]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, namespace=RAY_NAMESPACE, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _hosts() -> list[str]:
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == RAY_NAMESPACE and actor["name"].startswith("tempomem/host/")
    ]


@pytest.fixture
def sessions(ray_cluster: None) -> Iterator[list[SessionId]]:
    """The session hosts (and so every session) are killed for good when a test ends."""
    created: list[SessionId] = []
    yield created
    for name in _hosts():
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=RAY_NAMESPACE), no_restart=True)


def _host_of(client: TempomemClient, name: str) -> object:
    transport = client.transport
    assert isinstance(transport, RayTransport)
    return transport.handle(client.session_id(name))


def _tokens(step: int) -> list[int]:
    """The observation of step ``step``: deterministic, different per step."""
    return [(7 * step + 3 * i) % 120 + 1 for i in range(PREFIX + 4)]


def _step(client: TempomemClient, session: str, step: int) -> StepResponse:
    return client.step(session, step, _tokens(step), PREFIX, choices=CHOICES)


def _same_answer(a: StepResponse, b: StepResponse) -> bool:
    assert a.choice_scores is not None and b.choice_scores is not None
    pairs = [
        *zip(a.top_k_logits, b.top_k_logits, strict=True),
        *zip(a.choice_scores, b.choice_scores, strict=True),
    ]
    return a.top_k_ids == b.top_k_ids and all(math.isclose(x, y, abs_tol=1e-5) for x, y in pairs)


def _register(created: list[SessionId], client: TempomemClient | AsyncTempomemClient, name: str):
    created.append(client.session_id(name))
    return name


def _kill_and_wait_for_restart(client: TempomemClient, name: str) -> None:
    """SIGKILL-like ``ray.kill`` of the session's host (restart allowed); return once the new
    incarnation answers (it says ``restored``: the killed one had started empty)."""
    assert not client.summary(name).restored
    ray.kill(_host_of(client, name), no_restart=False)
    deadline = time.monotonic() + 60
    while not client.summary(name).restored:
        assert time.monotonic() < deadline, "the session actor did not come back"
        time.sleep(0.05)


# ------------------------------------------------------------------------------ validation


def test_malformed_requests_are_errors_naming_the_field(sessions: list[SessionId]) -> None:
    def field_of(err: pydantic.ValidationError) -> tuple:
        return tuple(err.errors()[0]["loc"])

    cases = [
        ({"step_id": -1, "input_ids": [1], "prefix_len": 1}, ("step_id",)),
        ({"step_id": 0, "input_ids": [], "prefix_len": 1}, ("input_ids",)),
        ({"step_id": 0, "input_ids": [1, -5], "prefix_len": 1}, ("input_ids", 1)),
        ({"step_id": 0, "input_ids": [1] * 9000, "prefix_len": 1}, ("input_ids",)),
        ({"step_id": 0, "input_ids": [1, 2], "prefix_len": 3}, ("prefix_len",)),
        ({"step_id": 0, "input_ids": [1], "prefix_len": 1, "choices": [[]]}, ("choices", 0)),
        ({"step_id": 0, "input_ids": [1], "prefix_len": 1, "t": float("nan")}, ("t",)),
        ({"step_id": "0", "input_ids": [1], "prefix_len": 1}, ("step_id",)),
        ({"step_id": 0, "input_ids": [1], "prefix_len": 1, "prefixlen": 1}, ("prefixlen",)),
    ]
    for payload, loc in cases:
        with pytest.raises(pydantic.ValidationError) as info:
            StepRequest.model_validate(payload)
        assert field_of(info.value) == loc, payload
    with pytest.raises(pydantic.ValidationError) as info:
        SessionId(kind="robot", namespace="tenant a", id="r1")
    assert field_of(info.value) == ("namespace",)
    with pytest.raises(pydantic.ValidationError) as info:
        SessionId(kind="drone", namespace="t", id="r1")
    assert field_of(info.value) == ("kind",)

    client = TempomemClient("tenant-v", worker=WORKER)
    with pytest.raises(pydantic.ValidationError, match="prefix_len"):
        client.step("r1", 0, [1, 2, 3], prefix_len=4)  # rejected before anything is sent
    with pytest.raises(pydantic.ValidationError, match="id"):
        client.step("bad/id", 0, [1, 2, 3], prefix_len=2)
    # Token ids beyond the model's vocabulary: the worker names the field; the session lives on.
    name = _register(sessions, client, "r1")
    with pytest.raises(ValueError, match=r"input_ids\[1\]"):
        client.step(name, 0, [1, 500, 3], prefix_len=2)
    # The host validates raw payloads too (requests from other transports).
    host: Any = _host_of(client, name)
    raw = {"step_id": 0, "input_ids": [1], "prefix_len": 2}
    with pytest.raises(Exception, match="prefix_len"):
        ray.get(host.step.remote(client.session_id(name).model_dump(), raw))
    assert client.step(name, 0, _tokens(0), PREFIX).frames_in_memory == 0


# ------------------------------------------------------------------------------ idempotency


def test_replayed_step_id_returns_stored_response_and_is_not_applied(
    sessions: list[SessionId],
) -> None:
    client = TempomemClient("tenant-r", worker=WORKER)
    name = _register(sessions, client, "r1")
    answers = [_step(client, name, i) for i in range(3)]
    assert [a.frames_in_memory for a in answers] == [0, 1, 2]
    assert not any(a.replayed or a.degraded for a in answers)
    before = client.summary(name)

    replay = client.step(name, 1, _tokens(1), PREFIX, choices=CHOICES)
    assert replay.replayed and replay.step_id == 1
    assert replay.choice_scores == answers[1].choice_scores
    assert replay.top_k_logits == answers[1].top_k_logits
    after = client.summary(name)
    assert after.frames_in_memory == before.frames_in_memory == 3
    assert after.last_step_id == 2
    metrics = client.metrics(name)
    assert metrics["steps"] == 3 and metrics["replayed"] == 1

    assert _step(client, name, 3).frames_in_memory == 3  # the next new step is applied
    elapsed = client.elapsed(name)
    assert elapsed.last_step_id == 3
    assert elapsed.since_last_step_s is not None and 0 <= elapsed.since_last_step_s < 30

    reset = client.reset(name)
    assert reset.episode == 1 and not reset.degraded
    fresh = _step(client, name, 0)  # step ids start over in the new episode
    assert not fresh.replayed and fresh.frames_in_memory == 0 and fresh.episode == 1
    assert client.elapsed(name).since_last_step_s is not None


# ------------------------------------------------------------------------------ restarts


@pytest.mark.parametrize("placement", ["shared", "session"])
def test_killed_session_host_restarts_with_every_committed_step(
    sessions: list[SessionId], redis_server: LocalRedisServer, placement: str
) -> None:
    tenant = f"tenant-k{uuid.uuid4().hex[:6]}"
    worker = WORKER.model_copy(update={"placement": placement})
    through = TempomemClient(
        tenant, store=redis_server.url, worker=worker, config=SessionConfig(max_lag_steps=0)
    )
    victim = _register(sessions, through, "victim")
    steady = _register(sessions, through, "steady")
    for i in range(4):  # past capacity 4: the restored ring position matters too
        committed = _step(through, victim, i)
        assert committed.committed  # write-through: answered == committed
        _step(through, steady, i)

    _kill_and_wait_for_restart(through, victim)

    # The replayed last step comes back from the store; the next step matches a session that
    # never died.
    replay = _step(through, victim, 3)
    assert replay.replayed and replay.step_id == 3 and replay.committed
    summary = through.summary(victim)
    assert summary.restored and summary.last_step_id == 3 and summary.frames_in_memory == 4
    for i in (4, 5):
        restarted, uninterrupted = _step(through, victim, i), _step(through, steady, i)
        assert not restarted.replayed and restarted.frames_in_memory == 4
        assert _same_answer(restarted, uninterrupted)
    assert through.metrics(victim)["steps"] == 2  # counters are per actor incarnation

    # Write-behind (the default): only committed steps come back; the controller re-sends the
    # rest, which are then applied as new steps and still match.
    behind = TempomemClient(
        tenant, store=redis_server.url, worker=worker, config=SessionConfig(max_lag_steps=2)
    )
    lagging = _register(sessions, behind, "lagging")
    for i in range(6):
        _step(behind, lagging, i)
    assert behind.flush(lagging)
    _kill_and_wait_for_restart(behind, lagging)
    summary = behind.summary(lagging)
    assert summary.restored and summary.committed_step_id == summary.last_step_id == 5
    assert _same_answer(_step(behind, lagging, 6), _step(through, steady, 6))


# ------------------------------------------------------------------------------ degradation


@pytest.mark.parametrize("placement", ["shared", "session"])
def test_store_outage_degrades_to_memoryless_then_writes_resume(
    sessions: list[SessionId], private_redis: LocalRedisServer, placement: str
) -> None:
    tenant = f"tenant-d{uuid.uuid4().hex[:6]}"
    client = TempomemClient(
        tenant,
        store=StoreSpec(url=private_redis.url, socket_timeout_s=0.5),
        worker=WORKER.model_copy(update={"placement": placement}),
        config=SessionConfig(max_lag_steps=0, probe_interval_s=0.05),
    )
    name = _register(sessions, client, "r1")
    for i in range(2):
        assert _step(client, name, i).committed

    private_redis.kill()
    answers = [_step(client, name, i) for i in range(2, 6)]  # no exception reaches us
    # The step that found the store gone ran with memory (but is not committed); every later
    # step runs memoryless and says so.
    assert not answers[0].committed and answers[0].frames_in_memory == 2
    assert all(a.degraded and a.frames_in_memory == 0 for a in answers[1:])
    assert client.metrics(name)["degraded_steps"] == 3
    assert client.summary(name).degraded

    private_redis.start()  # an empty server (persistence off): the session writes itself back
    time.sleep(1.0)  # the writer probes every 0.05 s in the background, off the step path
    back = _step(client, name, 6)
    assert not back.degraded and back.committed
    assert back.frames_in_memory == 3  # steps 0-2 ran with memory; degraded ones were not kept
    metrics = client.metrics(name)
    assert metrics["recoveries"] == 1 and metrics["degraded_steps"] == 3
    store = RedisStore(private_redis.url, namespace=tenant)
    try:
        record = store.get_tensors(client.session_id(name).store_key)
        assert record is not None and record[1]["last_step_id"] == 6
        assert any(key.startswith("mem/") for key in record[0])
    finally:
        store.close()
    assert not client.summary(name).degraded


# ------------------------------------------------------------------------------ tenancy


def test_tenants_cannot_read_each_others_sessions(
    sessions: list[SessionId], redis_server: LocalRedisServer
) -> None:
    suffix = uuid.uuid4().hex[:6]
    a = TempomemClient(f"tenant-a{suffix}", store=redis_server.url, worker=WORKER)
    b = AsyncTempomemClient(f"tenant-b{suffix}", store=redis_server.url, worker=WORKER)
    shared = _register(sessions, a, "shared")
    _register(sessions, b, "shared")
    for i in range(3):
        _step(a, shared, i)
        assert a.flush(shared)

    async def tenant_b() -> StepResponse:
        answer = await b.step(shared, 0, _tokens(0), PREFIX, choices=CHOICES)
        assert await b.flush(shared)
        return answer

    answer_b = asyncio.run(tenant_b())
    assert answer_b.frames_in_memory == 0  # B's "shared" is not A's "shared"
    assert a.summary(shared).frames_in_memory == 3

    # A client of tenant A cannot address B's sessions; the actors and keys are B's own.
    other = b.session_id(shared)
    with pytest.raises(PermissionError, match="namespace"):
        a.step(other, 1, _tokens(1), PREFIX)
    assert a.session_id(shared) != other
    view_a = RedisStore(redis_server.url, namespace=a.namespace)
    view_b = RedisStore(redis_server.url, namespace=b.namespace)
    try:
        rec_a = view_a.get_tensors(other.store_key)
        rec_b = view_b.get_tensors(other.store_key)
        assert rec_a is not None and rec_b is not None  # same key, two namespaces
        assert rec_a[1]["last_step_id"] == 2 and rec_b[1]["last_step_id"] == 0
        assert rec_a[1]["session_id"].split("/")[1] == a.namespace
    finally:
        view_a.close()
        view_b.close()


# ------------------------------------------------------------------------------ real model


@pytest.mark.slow
def test_session_step_on_smollm2(sessions: list[SessionId]) -> None:
    smollm2 = WorkerSpec(model="smollm2", tempofit=TempoFitConfig(layers=[6, 9], capacity=4))
    client = TempomemClient("tenant-s", worker=smollm2)
    name = _register(sessions, client, "r1")
    tokens = [1, 9690, 28, 253, 2593, 1253, 30, 2, 1, 4093, 28]  # any ids < 49152
    answers = [
        client.step(name, i, tokens, prefix_len=8, choices=[[314], [1107, 30]]) for i in range(2)
    ]
    assert [a.frames_in_memory for a in answers] == [0, 1]
    assert answers[1].choice_scores is not None
    assert all(math.isfinite(s) and s < 0 for s in answers[1].choice_scores)
    assert answers[0].top_k_logits != answers[1].top_k_logits  # memory changed the step


# ------------------------------------------------------------------------------ env runner


def test_service_runner_matches_the_in_process_runners(sessions: list[SessionId]) -> None:
    """An env episode through the service gives the in-process answers: with memory those of
    ``TempoFitRunner`` (same model and config), without memory those of ``NoMemoryRunner``."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the tempomem/ ids)
    from envs.evaluation import run_episode
    from envs.frozen_policy import Frame
    from envs.memory_runners import make_runner
    from policies import tiny_random_model
    from services.service_runner import ServiceRunner

    class _TMazeTokens:
        name = "tiny"
        model = tiny_random_model()

        def frame(self, obs: object, info: dict[str, object]) -> Frame:
            o = list(obs)  # type: ignore[call-overload]
            prefix = [1, 2 + int(o[0]), 4 + int(o[1]), 6 + int(o[2]), 9, 10, 11, 12]
            choices = [[20], [21, 22]] if info["phase"] == "junction" else None
            return Frame(prefix_ids=prefix, suffix_ids=[30], choices=choices)

    policy = _TMazeTokens()
    client = TempomemClient(f"tenant-r{uuid.uuid4().hex[:6]}", worker=WORKER)
    env = gym.make("tempomem/TMaze-v0", corridor_length=5)  # past capacity 4
    assert WORKER.tempofit is not None
    for memory, local in (
        (True, make_runner("tempofit", policy, config=WORKER.tempofit)),
        (False, make_runner("none", policy)),
    ):
        name = _register(sessions, client, f"env-{memory}")
        remote = run_episode(ServiceRunner(policy, client, name, memory), env, 7, 0)
        reference = run_episode(local, env, 7, 0)
        assert remote.success == reference.success
        for a, b in zip(remote.steps, reference.steps, strict=True):
            assert a.action == b.action and a.decided == b.decided
            assert a.frames_in_memory == b.frames_in_memory
            if b.scores is not None:
                assert a.scores == pytest.approx(b.scores, abs=1e-5)
        local.close()


# ------------------------------------------------------------------------------ hosts


def _write_through(redis_server: LocalRedisServer, hosts: HostSpec) -> dict[str, Any]:
    """Client options: the Redis store, write-through sessions, these hosts."""
    config = SessionConfig(max_lag_steps=0)
    return {"store": redis_server.url, "worker": WORKER, "config": config, "hosts": hosts}


def test_sessions_share_a_bounded_pool_of_hosts_and_idle_ones_are_evicted(
    sessions: list[SessionId], redis_server: LocalRedisServer
) -> None:
    client = TempomemClient(
        f"tenant-h{uuid.uuid4().hex[:6]}",
        **_write_through(redis_server, HostSpec(hosts=2, idle_evict_s=0.5)),
    )
    names = [_register(sessions, client, f"s{k}") for k in range(6)]
    for name in names:
        for i in range(2):
            _step(client, name, i)
    assert len(_hosts()) <= 2  # six sessions, at most two actor processes
    time.sleep(1.0)
    _step(client, names[0], 2)  # the hosts' timers (every 0.125 s) have evicted idle sessions
    transport = client.transport
    assert isinstance(transport, RayTransport)
    evictions = sum(ray.get(h.stats.remote())["evictions"] for h in transport._handles.values())
    assert evictions >= 1
    for name in names[1:]:  # evicted or not, each comes back whole
        summary = client.summary(name)
        assert summary.last_step_id == 1 and summary.frames_in_memory == 2
    restored = [client.summary(name).restored for name in names[1:]]
    assert any(restored), "no session was restored from the store after eviction"
    assert _step(client, names[1], 2).frames_in_memory == 2


def test_a_host_killed_mid_burst_loses_no_committed_step(
    sessions: list[SessionId], redis_server: LocalRedisServer
) -> None:
    """Four robots step concurrently; their host is killed in the middle of the burst. Ray
    re-runs the interrupted calls on the restarted host (steps are idempotent by id), every
    call gets an answer, and every session ends with all its steps committed, in order."""
    tenant = f"tenant-c{uuid.uuid4().hex[:6]}"
    options = _write_through(redis_server, HostSpec(hosts=1))
    client = AsyncTempomemClient(tenant, **options)
    names = [_register(sessions, client, f"b{k}") for k in range(4)]
    steps = 8

    async def robot(name: str) -> list[StepResponse]:
        return [await client.step(name, i, _tokens(i), PREFIX) for i in range(steps)]

    async def burst() -> list[list[StepResponse]]:
        robots = [asyncio.ensure_future(robot(name)) for name in names]
        await asyncio.sleep(0.5)
        transport = client.transport
        assert isinstance(transport, AsyncRayTransport)
        ray.kill(transport.sync.handle(client.session_id(names[0])), no_restart=False)
        return await asyncio.gather(*robots)

    answers = asyncio.run(burst())
    sync = TempomemClient(tenant, **options)
    for name, replies in zip(names, answers, strict=True):
        assert [r.step_id for r in replies] == list(range(steps))
        summary = sync.summary(name)
        assert summary.committed_step_id == summary.last_step_id == steps - 1


def test_concurrent_async_steps_reach_their_host_in_batches(sessions: list[SessionId]) -> None:
    """Six robots stepping together through the async client: each tick's steps reach the
    host as one ``step_many`` call (one forward), and every answer is the one the sync client
    gets stepping the same observations one by one."""
    tenant = f"tenant-q{uuid.uuid4().hex[:6]}"
    options: dict[str, Any] = {"worker": WORKER, "hosts": HostSpec(hosts=1)}
    client = AsyncTempomemClient(tenant, **options)
    reference = TempomemClient(f"{tenant}-ref", **options)
    names = [_register(sessions, client, f"q{k}") for k in range(6)]
    for name in names:
        _register(sessions, reference, name)
    ticks = 5

    async def run() -> list[list[StepResponse]]:
        return [
            list(
                await asyncio.gather(
                    *(client.step(n, s, _tokens(s + k), PREFIX) for k, n in enumerate(names))
                )
            )
            for s in range(ticks)
        ]

    got = asyncio.run(run())
    for s, answers in enumerate(got):
        for k, (name, answer) in enumerate(zip(names, answers, strict=True)):
            expected = reference.step(name, s, _tokens(s + k), PREFIX)
            assert answer.top_k_ids == expected.top_k_ids
            assert answer.top_k_logits == pytest.approx(expected.top_k_logits, abs=1e-4)
            assert answer.frames_in_memory == expected.frames_in_memory == min(s, 4)
    transport = client.transport
    assert isinstance(transport, AsyncRayTransport)
    calls = sum(batcher.calls for batcher in transport._batchers.values())
    assert calls <= 2 * ticks < len(names) * ticks, calls
