"""The service against a careless or hostile client, and against a sick store.

In-process (``SessionActor`` is a plain class; the FastAPI app runs on a fake backend) with a
real redis-server where a store is involved: wedge sequences, truthful step-id errors, replays
with another body, non-finite and huge numbers, token configuration, a SIGSTOPped Redis.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kv_store import RedisStore, redact_url
from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from services.cli import parse_tokens
from services.http_app import AgentEventRequest, HttpSettings, create_app
from services.policy_worker import WorkerSpec
from services.schemas import SessionId, StepConflict, StepRequest
from services.session import SessionActor, StoreSpec

SPEC = WorkerSpec(
    model="tiny-llama", tempofit=TempoFitConfig(layers=[1, 2], capacity=3), placement="session"
)
PREFIX = 6
TOKEN = "tok-0123456789abcdef"


def _request(step: int, t: float | None = None, salt: int = 0) -> dict[str, Any]:
    ids = [(5 * step + 3 * i + salt) % 120 + 1 for i in range(PREFIX + 3)]
    return StepRequest(step_id=step, input_ids=ids, prefix_len=PREFIX, t=t).model_dump()


def _session(store: str = "local", **config: Any) -> SessionActor:
    session = SessionId(kind="robot", namespace=f"t{uuid.uuid4().hex[:8]}", id="arm")
    return SessionActor(session, store={"url": store}, worker=SPEC, config=config)


# ------------------------------------------------------------------------------ step ids, times


def test_step_ids_must_increase_and_errors_tell_the_truth() -> None:
    actor = _session()
    for step in (0, 1, 2, 5):
        actor.step(_request(step))
    with pytest.raises(StepConflict, match="never answered"):
        actor.step(_request(3))  # a gap: 3 never ran (was: "already applied")
    assert actor.step(_request(5))["replayed"]
    actor.step(_request(6))
    assert actor.summary()["last_step_id"] == 6


def test_a_retry_with_another_body_is_a_conflict_not_the_old_answer() -> None:
    actor = _session()
    first = actor.step(_request(0))
    assert actor.step(_request(0))["top_k_ids"] == first["top_k_ids"]  # a true retry
    with pytest.raises(StepConflict, match="different request"):
        actor.step(_request(0, salt=1))


def test_ids_below_the_replay_window_are_refused_with_the_window() -> None:
    actor = _session(replay_window=2)
    for step in range(5):
        actor.step(_request(step))
    with pytest.raises(StepConflict, match=r"kept: 3\.\.4"):
        actor.step(_request(1))


def test_huge_step_ids_and_times_are_refused_before_they_can_wedge_a_session() -> None:
    actor = _session()
    for bad in ({"step_id": 10**4000}, {"step_id": 2**63}, {"t": 1e308}, {"t": float("nan")}):
        with pytest.raises(ValueError):
            actor.step({**_request(0), **bad})
    assert actor.summary()["last_step_id"] is None  # nothing was applied
    actor.step(_request(0, t=1.0))
    actor.step(_request(1, t=2.0))


def test_time_going_backwards_says_how_to_reset_and_reset_clears_it() -> None:
    actor = _session()
    actor.step(_request(0, t=10.0))
    with pytest.raises(ValueError, match="reset the session"):
        actor.step(_request(1, t=9.0))
    actor.reset()
    actor.step(_request(0, t=1.0))


def test_step_ids_digests_and_times_survive_a_restart(redis_server: LocalRedisServer) -> None:
    session = SessionId(kind="robot", namespace=f"t{uuid.uuid4().hex[:8]}", id="arm")
    store, config = {"url": redis_server.url}, {"max_lag_steps": 0}
    first = SessionActor(session, store=store, worker=SPEC, config=config)
    first.step(_request(0, t=5.0))
    second = SessionActor(session, store=store, worker=SPEC, config=config)
    with pytest.raises(StepConflict, match="different request"):
        second.step(_request(0, t=5.0, salt=1))
    with pytest.raises(ValueError, match="backwards"):
        second.step(_request(1, t=4.0))


# ------------------------------------------------------------------------------ a sick store


def test_a_hung_store_costs_a_step_at_most_the_budget(redis_server: LocalRedisServer) -> None:
    """SIGSTOP the store: the step that finds it hung waits at most ``store_budget_s`` on it,
    later steps run degraded without waiting; SIGCONT: the writer catches up in the
    background and steps use memory again, with every step in order."""
    with LocalRedisServer() as private:
        actor = _session(private.url, max_lag_steps=0, probe_interval_s=0.05)
        actor.step(_request(0))
        pid = private._process.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        try:
            answers = [actor.step(_request(step)) for step in range(1, 8)]
        finally:
            os.kill(pid, signal.SIGCONT)
        waits = [a["timing"]["store_ms"] for a in answers]
        assert max(waits) < 50 + 150, waits  # the budget, plus scheduling slack
        assert not answers[0]["degraded"] and not answers[0]["committed"]
        assert all(a["degraded"] for a in answers[2:])
        metrics = actor.metrics()
        assert metrics["degraded_steps"] + metrics["store_slow_steps"] >= 5
        deadline = time.monotonic() + 10
        while actor.step(_request(len(answers) + 1))["degraded"]:
            assert time.monotonic() < deadline, "the session did not recover"
            answers.append({})
        assert actor.flush(10)
        record = RedisStore(private.url, namespace=actor.session_id.namespace).get_tensors(
            actor.session_id.store_key
        )
        assert record is not None and record[1]["last_step_id"] == actor.summary()["last_step_id"]


# ------------------------------------------------------------------------------ HTTP inputs


class _Backend:
    def __init__(self) -> None:
        self.calls = 0

    async def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        self.calls += 1
        raise AssertionError("a bad request must not reach the backend")

    async def agent_event(self, session: SessionId, event: AgentEventRequest) -> str:
        raise AssertionError("a bad request must not reach the backend")

    def info(self, namespace: str) -> dict[str, Any]:
        return {"model": "fake", "store": "redis", "sessions": 0}


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("t", "NaN"),
        ("t", "Infinity"),
        ("t", "-Infinity"),
        ("t", "1e309"),
        ("t", "1e308"),
        ("step_id", "1" + "0" * 4000),
        ("step_id", str(2**63)),
    ],
)
def test_non_finite_and_huge_numbers_are_422_naming_the_field(field: str, text: str) -> None:
    backend = _Backend()
    app = create_app(lambda: backend, HttpSettings())
    body = {"step_id": 0, "input_ids": [1, 2, 3], "prefix_len": 2, "t": 1.0}
    raw = json.dumps(body).replace(f'"{field}": {json.dumps(body[field])}', f'"{field}": {text}')
    with TestClient(app) as http:
        response = http.post("/v1/sessions/r1/step", content=raw)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])
    assert backend.calls == 0


def test_healthz_tells_nothing_and_info_needs_a_token() -> None:
    app = create_app(_Backend, HttpSettings(tokens={TOKEN: "tenant-a"}))
    with TestClient(app) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/v1/info").status_code == 401
        info = http.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert info["store"] == "redis" and info["model"] == "fake"


def test_path_traversal_ids_are_refused() -> None:
    backend = _Backend()
    app = create_app(lambda: backend, HttpSettings())
    with TestClient(app) as http:
        for bad in ("%2e%2e", "..", ".", ".hidden", "-x"):
            status = http.get(f"/v1/sessions/{bad}/summary").status_code
            assert status in (404, 405, 422), (bad, status)  # 405: "." is normalised away
    assert backend.calls == 0


# ------------------------------------------------------------------------------ configuration


def test_tokens_are_checked_and_errors_never_show_them() -> None:
    secret = "s3cr3t-s3cr3t-s3cr3t"
    assert parse_tokens([f"tenant-a:{secret}", "tenant-b:other-0123456789ab"]) == {
        secret: "tenant-a",
        "other-0123456789ab": "tenant-b",
    }
    cases = {
        "duplicate": [f"tenant-a:{secret}", f"tenant-b:{secret}"],
        "short": ["tenant-a:abc"],
        "separator inside": [f"tenant-a:{secret}:tail"],
        "bad namespace": [f"tenant a:{secret}"],
        "space": [f"tenant-a:{secret} x"],
    }
    for case, values in cases.items():
        with pytest.raises(ValueError) as caught:
            parse_tokens(values)
        assert secret not in str(caught.value), case
        assert "s3cr3t" not in str(caught.value), case
    with pytest.raises(ValueError):
        HttpSettings(tokens={"short": "tenant-a"})


def test_store_urls_never_show_their_password() -> None:
    url = "redis://user:hunter2-hunter2@127.0.0.1:1/0?password=hunter2-hunter2"
    assert "hunter2" not in redact_url(url)
    with pytest.raises(ValueError) as caught:
        StoreSpec(url="redis://:hunter2-hunter2@ bad host")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(StoreSpec(url=url))
    store = RedisStore(url)
    assert "hunter2" not in repr(store)
    with pytest.raises(Exception) as down:
        store.ping()
    assert "hunter2" not in str(down.value)
