"""The HTTP API on real Ray Serve and a real redis-server (issue 6, part B).

One Ray instance and one Serve application for the module (tiny random LLaMA, tokens for two
tenants, a redis store), shut down at the end; the detached session actors die with Ray. A
second, small application whose store is unreachable serves the degradation test. App-level
checks that need no Ray (no-token tenancy by header, streamed oversized bodies) run the FastAPI
app in-process against a fake backend.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from serve_apps import free_port, local_serve
from stream_cases import answer_bad_messages
from test_advisor_support import tool
from websockets.exceptions import ConnectionClosed

from kv_store import RedisStore
from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from services.client import AsyncTempomemClient, TempomemClient
from services.deployment import POLICY_DEPLOYMENT, ServeSettings, build_app
from services.http_app import AdviseRequest, AgentEventRequest, HttpSettings, create_app
from services.policy_worker import WorkerSpec
from services.schemas import (
    SessionId,
    SessionLimitReached,
    SessionNotFound,
    StepConflict,
    StepResponse,
)
from services.session import SessionConfig, StoreSpec

RAY_NAMESPACE = f"tempomem-http-{uuid.uuid4().hex[:8]}"
WORKER = WorkerSpec(model="tiny-llama", tempofit=TempoFitConfig(layers=[1, 2], capacity=4))
TOKENS = {"tok-a-0123456789abcdef": "tenant-a", "tok-b-0123456789abcdef": "tenant-b"}


def _token(tenant: str) -> str:
    return f"tok-{tenant}-0123456789abcdef"


MAX_BODY = 256 * 1024
PREFIX = 8


@dataclass
class Service:
    url: str
    app_name: str
    store_url: str

    def client(self, tenant: str = "a") -> TempomemClient:
        return TempomemClient.connect(self.url, namespace=f"tenant-{tenant}", token=_token(tenant))

    def batches(self) -> list[int]:
        handle = serve.get_deployment_handle(POLICY_DEPLOYMENT, app_name=self.app_name)
        return list(handle.info.remote().result(timeout_s=30)["batches"])


def _settings(store_url: str, **overrides: Any) -> ServeSettings:
    """The test app's settings: the tiny model, write-through sessions, two tenants' tokens."""
    return ServeSettings(
        ray_namespace=RAY_NAMESPACE,
        worker=WORKER,
        store=StoreSpec(url=store_url),
        session=SessionConfig(max_lag_steps=0),
        http=HttpSettings(tokens=TOKENS, max_body_bytes=MAX_BODY),
        **overrides,
    )


@pytest.fixture(scope="module")
def service(redis_server: LocalRedisServer) -> Iterator[Service]:
    settings = _settings(
        redis_server.url, app_name="tempomem-test", batch_wait_timeout_s=0.05, request_timeout_s=60
    )
    with local_serve(settings) as url:
        yield Service(url=url, app_name=settings.app_name, store_url=redis_server.url)


def _tokens(step: int, salt: int = 0) -> list[int]:
    return [(7 * step + 3 * i + 11 * salt) % 120 + 1 for i in range(PREFIX + 4)]


def _auth(tenant: str = "a") -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(tenant)}"}


def _close(a: StepResponse, b: StepResponse) -> bool:
    pairs = zip(a.top_k_logits, b.top_k_logits, strict=True)
    return a.top_k_ids == b.top_k_ids and all(math.isclose(x, y, abs_tol=1e-5) for x, y in pairs)


# ------------------------------------------------------------------------------ round trip


def test_step_reset_elapsed_round_trip(service: Service) -> None:
    client = service.client("a")
    name = f"rt-{uuid.uuid4().hex[:6]}"
    assert client.reset(name).episode == 1
    answers = [client.step(name, i, _tokens(i), PREFIX, top_k=4) for i in range(3)]
    assert [a.frames_in_memory for a in answers] == [0, 1, 2]
    assert all(len(a.top_k_ids) == 4 and a.committed and not a.degraded for a in answers)
    assert answers[0].session_id == f"robot/tenant-a/{name}"
    replay = client.step(name, 1, _tokens(1), PREFIX, top_k=4)
    assert replay.replayed and replay.top_k_logits == answers[1].top_k_logits
    elapsed = client.elapsed(name)
    assert elapsed.last_step_id == 2 and elapsed.since_last_step_s is not None
    assert 0 <= elapsed.since_last_step_s < 60
    summary = client.summary(name)
    assert summary.frames_in_memory == 3 and summary.committed_step_id == 2
    assert client.metrics(name)["steps"] == 3
    reset = client.reset(name, reason="new episode")
    assert reset.episode == 2 and not reset.degraded
    assert client.step(name, 0, _tokens(0), PREFIX).frames_in_memory == 0
    openapi = httpx.get(service.url + "/openapi.json").json()
    assert "/v1/sessions/{session_id}/step" in openapi["paths"]
    assert httpx.get(service.url + "/healthz").json() == {"status": "ok"}  # no token, no data
    info = httpx.get(service.url + "/v1/info", headers=_auth()).json()
    assert info["model"] == "tiny-llama" and info["store"] == "redis" and info["sessions"] >= 1
    assert httpx.get(service.url + "/v1/info").status_code == 401


# ------------------------------------------------------------------------------ validation


def test_malformed_requests_are_4xx_naming_the_field(service: Service) -> None:
    url = f"{service.url}/v1/sessions/val-{uuid.uuid4().hex[:6]}/step"
    cases: list[tuple[Any, str]] = [
        ({"step_id": 0, "input_ids": [1, 2], "prefix_len": 3}, "prefix_len"),
        ({"input_ids": [1, 2], "prefix_len": 1}, "step_id"),
        ({"step_id": 0, "input_ids": [1, -2], "prefix_len": 1}, "input_ids"),
        ({"step_id": 0, "input_ids": [1], "prefix_len": 1, "prefixlen": 1}, "prefixlen"),
        ({"step_id": "zero", "input_ids": [1], "prefix_len": 1}, "step_id"),
        ({"step_id": 0, "input_ids": [1], "prefix_len": 1, "top_k": 1000}, "top_k"),
    ]
    for body, field in cases:
        response = httpx.post(url, json=body, headers=_auth())
        assert response.status_code == 422, body
        locs = [err["loc"] for err in response.json()["detail"]]
        assert any(field in loc for loc in locs), (body, locs)
    response = httpx.post(url, content=b"{not json", headers=_auth())
    assert response.status_code == 422
    # A token id beyond the model's vocabulary: checked by the policy, named precisely.
    response = httpx.post(
        url, json={"step_id": 0, "input_ids": [1, 500, 3], "prefix_len": 2}, headers=_auth()
    )
    assert response.status_code == 422 and "input_ids[1]" in response.json()["detail"]
    bad_id = httpx.post(
        f"{service.url}/v1/sessions/bad%20id/step",
        json={"step_id": 0, "input_ids": [1], "prefix_len": 1},
        headers=_auth(),
    )
    assert bad_id.status_code == 422 and "session_id" in str(bad_id.json()["detail"])
    with pytest.raises(ValueError, match="prefix_len"):  # the client rejects it before sending
        service.client("a").step("r1", 0, [1, 2], prefix_len=3)


def test_oversized_body_is_413(service: Service) -> None:
    url = f"{service.url}/v1/sessions/big/step"
    body = b'{"step_id": 0, "input_ids": [' + b"1, " * (MAX_BODY // 3) + b'1], "prefix_len": 1}'
    assert len(body) > MAX_BODY
    response = httpx.post(url, content=body, headers=_auth())
    assert response.status_code == 413 and "too large" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(8):
            yield b" " * (MAX_BODY // 4)

    response = httpx.post(url, content=chunks(), headers=_auth())
    assert response.status_code == 413


def test_bad_or_missing_token_is_401(service: Service) -> None:
    url = f"{service.url}/v1/sessions/auth/elapsed"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Basic dG9rLWE="}).status_code == 401
    missing = httpx.get(url)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(service.url + "/metrics").status_code == 401
    with pytest.raises(PermissionError, match="401"):
        TempomemClient.connect(service.url, namespace="tenant-a", token="wrong").elapsed("auth")


# ------------------------------------------------------------------------------ tenancy


def test_two_tenants_cannot_read_each_others_sessions(service: Service) -> None:
    a, b = service.client("a"), service.client("b")
    shared = f"shared-{uuid.uuid4().hex[:6]}"
    for i in range(3):
        a.step(shared, i, _tokens(i), PREFIX)
    # B's "shared" is B's own: a fresh session, not A's memory.
    assert b.step(shared, 0, _tokens(0), PREFIX).frames_in_memory == 0
    assert a.summary(shared).last_step_id == 2 and b.summary(shared).last_step_id == 0
    # B's token cannot claim A's namespace, whatever the header says.
    response = httpx.get(
        f"{service.url}/v1/sessions/{shared}/summary",
        headers={**_auth("b"), "X-Tempomem-Namespace": "tenant-a"},
    )
    assert response.status_code == 403
    wrong = TempomemClient.connect(service.url, namespace="tenant-a", token=_token("b"))
    with pytest.raises(PermissionError, match="403"):
        wrong.summary(shared)
    with pytest.raises(PermissionError, match="namespace"):  # the client refuses it locally
        a.summary(SessionId(kind="robot", namespace="tenant-b", id=shared))


# ------------------------------------------------------------------------------ agents


def test_agent_events_and_advise(service: Service) -> None:
    base = f"{service.url}/v1/agents/agent-{uuid.uuid4().hex[:6]}"
    t0 = 1_700_000_000.0
    events = [
        {"kind": "message", "message": {"role": "user", "content": "Weather in Paris?"}, "t": t0},
        {"kind": "tool_call", "name": "get_weather", "arguments": {"city": "Paris"},
         "call_id": "c1", "t": t0 + 1},
        {"kind": "tool_result", "call_id": "c1", "name": "get_weather",
         "content": {"temp_c": 18, "sky": "clear"}, "t": t0 + 2},
        {"kind": "message", "message": {"role": "assistant", "content": "18 C, clear."},
         "t": t0 + 3},
        {"kind": "message", "message": {"role": "user", "content": "And the weather in Paris now?"},
         "t": t0 + 3 * 86400},
    ]  # fmt: skip
    for event in events:
        response = httpx.post(base + "/events", json=event, headers=_auth())
        assert response.status_code == 200, response.text
        assert response.json()["session_id"].startswith("agent/tenant-a/")
    tools = [tool("get_weather", "Current weather for a city.", "city")]
    stale = httpx.post(
        base + "/advise", json={"tools": tools, "now": t0 + 3 * 86400 + 5}, headers=_auth()
    )
    assert stale.status_code == 200, stale.text
    decision = stale.json()
    assert decision["call_tool"] is True and decision["tool"] == "get_weather"
    assert decision["age_s"] is not None and decision["age_s"] > 86400 and decision["reason"]
    # Bad events are 422 naming the problem; times may not go backwards.
    missing = httpx.post(base + "/events", json={"kind": "message"}, headers=_auth())
    assert missing.status_code == 422 and "message" in missing.json()["detail"]
    backwards = httpx.post(
        base + "/events",
        json={"kind": "message", "message": {"role": "user", "content": "hi"}, "t": t0},
        headers=_auth(),
    )
    assert backwards.status_code == 422 and "backwards" in backwards.json()["detail"]
    # Another tenant's log of the same id is empty: nothing to advise on.
    other = httpx.post(base + "/advise", json={"tools": tools}, headers=_auth("b"))
    assert other.status_code == 422 and "no messages" in other.json()["detail"]


# ------------------------------------------------------------------------------ metrics


def test_metrics_parse_as_prometheus_text(service: Service) -> None:
    client = service.client("a")
    name = f"m-{uuid.uuid4().hex[:6]}"
    client.step(name, 0, _tokens(0), PREFIX)
    response = httpx.get(service.url + "/metrics", headers=_auth())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["tempomem_steps"].type == "counter"
    assert families["tempomem_steps"].samples[0].value >= 1
    assert "tempomem_degraded_steps" in families
    histogram = families["tempomem_step_latency_seconds"]
    assert histogram.type == "histogram"
    count = next(s for s in histogram.samples if s.name.endswith("_count")).value
    inf = next(s for s in histogram.samples if s.labels.get("le") == "+Inf").value
    assert count == inf >= 1
    requests = families["tempomem_http_requests"]
    assert any(s.labels["status"] == "200" for s in requests.samples)


# ------------------------------------------------------------------------------ batching


def test_concurrent_steps_of_two_sessions_match_sequential_ones(service: Service) -> None:
    tag = uuid.uuid4().hex[:6]
    sequential = service.client("a")
    concurrent = AsyncTempomemClient.connect(service.url, namespace="tenant-a", token=_token("a"))
    seq_names, con_names = [f"s{k}-{tag}" for k in range(2)], [f"c{k}-{tag}" for k in range(2)]
    for name in seq_names + con_names:  # start the session actors (process start-up)
        sequential.reset(name)
    before = len(service.batches())

    async def run() -> None:
        for step in range(4):
            alone = [  # blocking calls: one at a time, nothing to batch them with
                sequential.step(name, step, _tokens(step, k), PREFIX)
                for k, name in enumerate(seq_names)
            ]
            both = await asyncio.gather(
                *(
                    concurrent.step(name, step, _tokens(step, k), PREFIX)
                    for k, name in enumerate(con_names)
                )
            )
            for x, y in zip(alone, both, strict=True):
                assert x.frames_in_memory == y.frames_in_memory == step
                assert _close(x, y), (step, x.top_k_logits, y.top_k_logits)

    asyncio.run(run())
    batches = service.batches()[before:]
    assert max(batches) >= 2, f"no concurrent steps were batched: {batches}"


# ------------------------------------------------------------------------------ degradation


def test_store_unavailable_steps_degraded_over_http(service: Service) -> None:
    """A second app whose store does not answer: steps go on memoryless, flagged, counted."""
    settings = ServeSettings(
        app_name="tempomem-degraded",
        ray_namespace=RAY_NAMESPACE,
        worker=WORKER,
        store=StoreSpec(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.2),
        session=SessionConfig(probe_interval_s=60),
        http=HttpSettings(tokens=TOKENS),
    )
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/degraded")
    try:
        client = TempomemClient.connect(
            service.url + "/degraded", namespace="tenant-a", token=_token("a")
        )
        answers = [client.step("d1", i, _tokens(i), PREFIX) for i in range(3)]
        assert all(a.degraded and a.frames_in_memory == 0 for a in answers)
        assert client.metrics("d1")["degraded_steps"] == 3
        text = httpx.get(service.url + "/degraded/metrics", headers=_auth()).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["tempomem_degraded_steps"].samples[0].value == 3
        events = httpx.post(
            service.url + "/degraded/v1/agents/x/events",
            json={"kind": "llm_start"},
            headers=_auth(),
        )
        assert events.status_code == 503
    finally:
        serve.delete(settings.app_name)


# ------------------------------------------------------------------------------ lifecycle


def test_reads_never_create_delete_ends_and_caps_hold(service: Service) -> None:
    """Reads of an unknown session are 404 and create no actor; DELETE removes the record and
    the actor; a tenant's sessions beyond its cap are 429, and deleting one makes room."""
    settings = _settings(service.store_url, app_name="tempomem-capped", max_sessions_per_tenant=2)
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/capped")
    tenant = {"tenant-b": _token("b")}
    try:
        client = TempomemClient.connect(service.url + "/capped", namespace="tenant-b",
                                        token=tenant["tenant-b"])  # fmt: skip
        tag = uuid.uuid4().hex[:6]
        ghost = f"ghost-{tag}"
        for read in (client.summary, client.elapsed, client.metrics, client.flush, client.delete):
            with pytest.raises(SessionNotFound):
                read(ghost)
        names = [f"cap{k}-{tag}" for k in range(3)]
        store = RedisStore(service.store_url, namespace="tenant-b")
        live = store.keys(prefix="session/robot/")  # a tenant's sessions are its records
        room = max(0, 2 - len(live))
        for name in names[:room]:
            client.step(name, 0, _tokens(0), PREFIX)
        with pytest.raises(SessionLimitReached, match="cap is 2"):
            client.step(names[room], 0, _tokens(0), PREFIX)
        records = store.keys(prefix="session/robot/")
        assert len(records) == 2 and not any(ghost in key for key in records)
        victim = names[0] if room else live[0].rsplit("/", 1)[1]
        key = SessionId(kind="robot", namespace="tenant-b", id=victim).store_key
        assert store.get_tensors(key) is not None
        assert client.delete(victim) is True
        assert store.get_tensors(key) is None
        with pytest.raises(SessionNotFound):
            client.summary(victim)
        assert client.step(names[room], 0, _tokens(0), PREFIX).frames_in_memory == 0
    finally:
        serve.delete(settings.app_name)


# ------------------------------------------------------------------------------ stream


def _ws_url(service: Service, session: str) -> str:
    return service.url.replace("http://", "ws://") + f"/v1/sessions/{session}/stream"


def test_stream_refuses_a_missing_bad_or_foreign_token(service: Service) -> None:
    """The token is checked in the handshake: the greeting is the HTTP route's 401/403 and the
    server closes the connection (1008); the client raises before any step."""
    from websockets.sync.client import connect

    with connect(_ws_url(service, "auth"), compression=None) as ws:
        greeting = json.loads(ws.recv(timeout=30))
        assert greeting["status"] == 401 and "token" in greeting["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    refusals = [(None, "401"), ("wrong-token-0123456789", "401"), (_token("b"), "403")]
    for token, status in refusals:
        client = TempomemClient.connect(service.url, namespace="tenant-a", token=token)
        with pytest.raises(PermissionError, match=status):
            client.stream("auth")
    with pytest.raises(TypeError, match="connect"):
        TempomemClient("tenant-a", transport=_NotHttp()).stream("auth")


class _NotHttp:
    def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        raise AssertionError("never called")


def test_stream_steps_equal_http_steps_and_replay_by_step_id(service: Service) -> None:
    """The same steps over HTTP, over a sync stream and over an async stream (three sessions)
    get the same answers; a replayed step id returns the stored answer, another body with a
    used id is 409, and the stream goes on."""
    tag = uuid.uuid4().hex[:6]
    http = service.client("a")
    over_http = [http.step(f"h-{tag}", i, _tokens(i), PREFIX, top_k=4) for i in range(4)]
    with http.stream(f"s-{tag}") as stream:
        assert not stream.direct  # this app's hosts take no streams: the route carries them
        over_stream = [stream.step(i, _tokens(i), PREFIX, top_k=4) for i in range(4)]
        replay = stream.step(2, _tokens(2), PREFIX, top_k=4)
        assert replay.replayed and replay.top_k_logits == over_stream[2].top_k_logits
        with pytest.raises(StepConflict, match="409"):
            stream.step(3, _tokens(99), PREFIX, top_k=4)
        after = stream.step(4, _tokens(4), PREFIX, top_k=4)
        assert after.frames_in_memory == 4 and not after.replayed
    assert http.summary(f"s-{tag}").last_step_id == 4

    async def run_async() -> list[StepResponse]:
        client = AsyncTempomemClient.connect(service.url, namespace="tenant-a", token=_token("a"))
        async with await client.stream(f"as-{tag}") as stream:
            return [await stream.step(i, _tokens(i), PREFIX, top_k=4) for i in range(4)]

    over_async = asyncio.run(run_async())
    for a, b, c in zip(over_http, over_stream, over_async, strict=True):
        assert a.frames_in_memory == b.frames_in_memory == c.frames_in_memory
        assert _close(a, b) and _close(a, c), (a.top_k_logits, b.top_k_logits, c.top_k_logits)
        assert b.session_id == f"robot/tenant-a/s-{tag}" and b.committed


def test_stream_bad_messages_get_error_answers_and_the_connection_continues(
    service: Service,
) -> None:
    """Each bad message is answered with the HTTP route's status and a detail naming the
    problem; the next good step on the same connection is answered normally."""
    from websockets.sync.client import connect

    session = f"bad-{uuid.uuid4().hex[:6]}"
    good = {"step_id": 0, "input_ids": _tokens(0), "prefix_len": PREFIX}
    with connect(_ws_url(service, session), additional_headers=_auth(), compression=None) as ws:
        assert json.loads(ws.recv(timeout=30)) == {
            "status": 200,
            "session_id": f"robot/tenant-a/{session}",
        }
        answer_bad_messages(ws, good, MAX_BODY)
    with connect(_ws_url(service, "bad%20id"), additional_headers=_auth()) as ws:
        refused = json.loads(ws.recv(timeout=30))
        assert refused["status"] == 422 and "session id" in refused["detail"]


# ------------------------------------------------------------------------------ fuzzing


def test_schemathesis_finds_no_server_errors(service: Service) -> None:
    """Property-based requests from the OpenAPI spec (schemathesis) never get a 5xx: valid
    ones (positive mode) and ones that break the schema (negative mode: wrong types, out of
    range numbers, missing and extra fields), with generated session ids (sessions are cheap
    on session hosts). Bounded: a few examples per operation and mode, and a time limit.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    spec = httpx.get(service.url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    deadline = time.monotonic() + 150  # generous: CI machines are shared and slow
    failures: list[str] = []
    checked = 0
    operations = [
        (result.ok(), mode)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=8,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal checked
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=service.url, headers=_auth(), timeout=60)
            checked += 1
            if response.status_code >= 500:
                failures.append(
                    f"{mode.value} {case.method} {case.formatted_path}: "
                    f"{response.status_code} {response.text[:200]}"
                )

        try:
            run()
        except Unsatisfiable:  # nothing to break in this operation (e.g. no parameters)
            assert mode is GenerationMode.NEGATIVE

    for operation, mode in operations:
        fuzz(operation, mode)
    assert checked >= 20, f"only {checked} cases ran before the time limit"
    assert not failures, failures


# ------------------------------------------------------------------------------ no Ray


class _FakeBackend:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        self.seen.append((session.namespace, method))
        return {
            "session_id": str(session),
            "since_last_step_s": None,
            "since_reset_s": 0.0,
            "last_step_id": None,
        }

    async def agent_event(self, session: SessionId, event: AgentEventRequest) -> str:
        return "1-0"

    async def advise(self, session: SessionId, request: AdviseRequest) -> dict[str, Any]:
        raise ValueError("nothing to advise on")

    def info(self, namespace: str) -> dict[str, Any]:
        return {"model": "fake", "store": "local", "sessions": 0}


def test_without_tokens_the_namespace_is_the_header() -> None:
    backend = _FakeBackend()
    app = create_app(lambda: backend, HttpSettings(max_body_bytes=2048))
    with TestClient(app) as http:
        assert http.get("/v1/sessions/r1/elapsed").status_code == 200
        headers = {"X-Tempomem-Namespace": "team-x"}
        assert http.get("/v1/sessions/r1/elapsed", headers=headers).status_code == 200
        bad = http.get("/v1/sessions/r1/elapsed", headers={"X-Tempomem-Namespace": "a b"})
        assert bad.status_code == 422
        assert http.post("/v1/sessions/r1/step", content=b"x" * 4096).status_code == 413
        assert http.get("/metrics").status_code == 200
    assert backend.seen == [("default", "elapsed"), ("team-x", "elapsed")]


def test_agent_ids_follow_one_rule_checked_at_the_route() -> None:
    """An agent id the event log would refuse ("-a": not a letter or digit first) is a 422
    naming the path parameter, before any backend call."""
    backend = _FakeBackend()
    app = create_app(lambda: backend, HttpSettings())
    body = {"kind": "message", "message": {"role": "user", "content": "hi"}}
    with TestClient(app) as http:
        for bad in ("-a", ".hidden", "a" * 65):
            response = http.post(f"/v1/agents/{bad}/events", json=body)
            assert response.status_code == 422, bad
            assert "session_id" in str(response.json()["detail"]), bad
    assert backend.seen == []
