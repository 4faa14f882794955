"""Direct streams (issue 17, item 3): a session host takes its robots' WebSockets itself.

Three levels, all real: a ``SessionHost`` in this process with its stream server (tickets,
bounds, bad messages, threads); the HTTP app served by uvicorn over that host (the client
moving to the host's stream, or staying on the route when it cannot); and ``tempomem serve``
on real Ray Serve with a redis store (the deployment: equal answers, a host restart).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from serve_apps import free_port, local_serve
from stream_cases import answer_bad_messages
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from services.client import TempomemClient
from services.deployment import ServeSettings
from services.host_stream import DIRECT_PATH, DirectStreamSpec
from services.http_app import HttpSettings, create_app
from services.policy_worker import WorkerSpec
from services.schemas import SessionId, StepResponse
from services.session import SessionConfig, StoreSpec
from services.session_host import HostSpec, SessionHost, host_index
from services.stream_client import StreamCore

WORKER = WorkerSpec(
    model="tiny-llama", placement="session", tempofit=TempoFitConfig(layers=[1, 2], capacity=4)
)
PREFIX = 8
MAX_MESSAGE = 4096
TOKEN = "tok-direct-0123456789abcdef"


def _tokens(step: int, salt: int = 0) -> list[int]:
    return [(7 * step + 3 * i + 11 * salt) % 120 + 1 for i in range(PREFIX + 4)]


def _request(step: int, salt: int = 0) -> dict[str, Any]:
    return {"step_id": step, "input_ids": _tokens(step, salt), "prefix_len": PREFIX, "top_k": 4}


def _close(a: StepResponse, b: StepResponse) -> bool:
    pairs = zip(a.top_k_logits, b.top_k_logits, strict=True)
    return a.top_k_ids == b.top_k_ids and all(math.isclose(x, y, abs_tol=1e-5) for x, y in pairs)


def _robot(name: str) -> dict[str, str]:
    return SessionId(kind="robot", namespace="tenant", id=name).model_dump(mode="json")


def _refused(url: str, headers: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
    """The refusal a stream server greets ``url`` with, and the close code that follows."""
    with connect(url, additional_headers=headers or {}, compression=None) as ws:
        refusal = json.loads(ws.recv(timeout=30))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None
    return refusal, closed.value.rcvd.code


def _open_direct(offer: dict[str, str]) -> Any:
    return connect(offer["url"], additional_headers={"Authorization": f"Bearer {offer['ticket']}"})


# ------------------------------------------------------------------------------ one host


@pytest.fixture(scope="module")
def host() -> Iterator[SessionHost]:
    spec = DirectStreamSpec(max_message_bytes=MAX_MESSAGE, max_connections=3, ticket_ttl_s=1.0)
    yield SessionHost(
        0,
        store={"url": "local"},
        worker=WORKER.model_dump(mode="json"),
        host=HostSpec(direct_stream=spec, idle_evict_s=None).model_dump(mode="json"),
    )


def test_a_ticket_opens_one_stream_of_its_session_once(host: SessionHost) -> None:
    """The greeting names the ticket's session; its steps equal the host's Ray-call steps of
    a twin session; a replayed step id is answered from the window. The same ticket, a made
    up one, none at all, or another path are refused with 401 and close code 1008."""
    name = f"r-{uuid.uuid4().hex[:6]}"
    offer = host.open_stream(_robot(name))
    assert offer is not None and offer["url"].startswith("ws://127.0.0.1:")
    assert offer["url"].endswith(DIRECT_PATH)
    with _open_direct(offer) as ws:
        greeting = json.loads(ws.recv(timeout=30))
        assert greeting == {"status": 200, "session_id": f"robot/tenant/{name}"}
        answers = []
        for step in range(5):
            ws.send(json.dumps(_request(step)))
            body = json.loads(ws.recv(timeout=60))
            assert body.pop("status") == 200, body
            answers.append(StepResponse.model_validate(body))
        ws.send(json.dumps(_request(3)))
        replayed = json.loads(ws.recv(timeout=60))
        assert replayed["replayed"] and replayed["top_k_logits"] == answers[3].top_k_logits
    twin = [
        StepResponse.model_validate(host.step(_robot(f"{name}-twin"), _request(step)))
        for step in range(5)
    ]
    assert [a.frames_in_memory for a in answers] == [0, 1, 2, 3, 4]
    assert all(_close(a, b) for a, b in zip(answers, twin, strict=True))

    for url, headers in (
        (offer["url"], {"Authorization": f"Bearer {offer['ticket']}"}),  # used already
        (offer["url"], {"Authorization": "Bearer made-up-ticket"}),
        (offer["url"], {}),
        (offer["url"].replace(DIRECT_PATH, "/v1/other"), _auth_of(host, name)),
    ):
        refusal, code = _refused(url, headers)
        assert refusal["status"] == 401 and "ticket" in refusal["detail"] and code == 1008


def _auth_of(host: SessionHost, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_offer(host, name)['ticket']}"}


def test_an_expired_ticket_is_refused_and_agents_get_none(host: SessionHost) -> None:
    offer = host.open_stream(_robot("late"))
    assert offer is not None
    time.sleep(1.2)  # the fixture's ticket_ttl_s is 1 s
    refusal, code = _refused(offer["url"], {"Authorization": f"Bearer {offer['ticket']}"})
    assert refusal["status"] == 401 and code == 1008
    agent = SessionId(kind="agent", namespace="tenant", id="a").model_dump(mode="json")
    with pytest.raises(ValueError, match="robot"):
        host.open_stream(agent)


def test_bad_messages_get_the_routes_answers_and_huge_frames_close(host: SessionHost) -> None:
    """The route's own error answers (shared cases), the connection goes on; a frame beyond
    four times the message bound closes it (1009) instead of being read into memory."""
    offer = host.open_stream(_robot(f"bad-{uuid.uuid4().hex[:6]}"))
    assert offer is not None
    with _open_direct(offer) as ws:
        assert json.loads(ws.recv(timeout=30))["status"] == 200
        answer_bad_messages(ws, _request(0), MAX_MESSAGE)
        ws.send("x" * (4 * MAX_MESSAGE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_streams_beyond_the_cap_are_refused_until_one_closes(host: SessionHost) -> None:
    opened = []
    for i in range(3):  # the fixture's max_connections
        ws = _open_direct(_offer(host, f"cap-{i}"))
        assert json.loads(ws.recv(timeout=30))["status"] == 200
        opened.append(ws)
    try:
        refusal, code = _refused(_offer(host, "cap-3")["url"], _auth_of(host, "cap-3"))
        assert refusal["status"] == 503 and "too many" in refusal["detail"] and code == 1013
        opened.pop().close()
        deadline = time.monotonic() + 10
        while host.stats()["stream_open"] >= 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        with _open_direct(_offer(host, "cap-3")) as ws:
            assert json.loads(ws.recv(timeout=30))["status"] == 200
    finally:
        for ws in opened:
            ws.close()


def _offer(host: SessionHost, name: str) -> dict[str, str]:
    offer = host.open_stream(_robot(name))
    assert offer is not None
    return offer


def test_ray_calls_and_streams_at_once_keep_each_sessions_memory(host: SessionHost) -> None:
    """A host's Ray calls and its stream server step from two threads; the one model they
    share runs one of them at a time, so two sessions given the same steps, one per thread,
    get the same answers (they would mix memories otherwise)."""
    tag = uuid.uuid4().hex[:6]
    over_calls: list[StepResponse] = []

    def call_steps() -> None:
        for step in range(20):
            over_calls.append(
                StepResponse.model_validate(host.step(_robot(f"calls-{tag}"), _request(step)))
            )

    thread = threading.Thread(target=call_steps)
    over_stream = []
    with _open_direct(_offer(host, f"stream-{tag}")) as ws:
        assert json.loads(ws.recv(timeout=30))["status"] == 200
        thread.start()
        for step in range(20):
            ws.send(json.dumps(_request(step)))
            body = json.loads(ws.recv(timeout=60))
            assert body.pop("status") == 200, body
            over_stream.append(StepResponse.model_validate(body))
    thread.join(timeout=120)
    assert len(over_calls) == 20
    assert all(_close(a, b) for a, b in zip(over_calls, over_stream, strict=True))


def test_stream_core_never_leaves_tls_for_plaintext() -> None:
    session = SessionId(kind="robot", namespace="t", id="r")
    offer = {"url": "ws://10.0.0.5:4000/v1/stream", "ticket": "t"}
    greeting = json.dumps({"status": 200, "session_id": "robot/t/r", "direct": offer})
    assert StreamCore("https://api.example", session, None, 1.0).greeting(greeting) is None
    assert StreamCore("http://api.example", session, None, 1.0).greeting(greeting) == (
        offer["url"],
        {"Authorization": "Bearer t"},
    )
    tls = json.dumps({"status": 200, "direct": {**offer, "url": "wss://h:1/v1/stream"}})
    assert StreamCore("https://api.example", session, None, 1.0).greeting(tls) is not None
    assert (
        StreamCore("http://api.example", session, None, 1.0, direct=False).greeting(greeting)
        is None
    )


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files), made here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tempomem test host")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "host.pem", directory / "host.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_host_with_a_certificate_streams_over_tls(tmp_path: Path) -> None:
    """With certfile/keyfile the host's URL is wss://; a client that trusts the certificate
    steps over it, one that does not (the system's CAs) cannot connect, and plain ws:// to
    that port gets no greeting. A certificate without its key is refused at once."""
    cert, key = _self_signed(tmp_path)
    spec = DirectStreamSpec(certfile=str(cert), keyfile=str(key))
    tls_host = SessionHost(
        1,
        store={"url": "local"},
        worker=WORKER.model_dump(mode="json"),
        host=HostSpec(direct_stream=spec, idle_evict_s=None).model_dump(mode="json"),
    )
    offer = tls_host.open_stream(_robot("tls"))
    assert offer is not None and offer["url"].startswith("wss://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(cert))
    headers = {"Authorization": f"Bearer {offer['ticket']}"}
    with connect(offer["url"], additional_headers=headers, ssl=trusting) as ws:
        assert json.loads(ws.recv(timeout=30))["session_id"] == "robot/tenant/tls"
        ws.send(json.dumps(_request(0)))
        assert json.loads(ws.recv(timeout=60))["status"] == 200
    again = _offer(tls_host, "tls")
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(again["url"], additional_headers={"Authorization": f"Bearer {again['ticket']}"})
    with pytest.raises((InvalidHandshake, OSError)):  # the server expects TLS first
        connect(again["url"].replace("wss://", "ws://"), open_timeout=5)
    with pytest.raises(ValueError, match="together"):
        DirectStreamSpec(certfile=str(cert))


# ------------------------------------------------------------------------------ the app


class _HostBackend:
    """The HTTP app's backend over the in-process host (what ``RayBackend`` does through Ray
    actors); ``offer_url`` replaces the URL the host offers (an unreachable one, say)."""

    def __init__(self, host: SessionHost) -> None:
        self.host = host
        self.offer_url: str | None = None

    async def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        sid = session.model_dump(mode="json")
        return await asyncio.to_thread(getattr(self.host, method), sid, payload)

    async def open_stream(self, session: SessionId) -> dict[str, str] | None:
        offer = self.host.open_stream(session.model_dump(mode="json"))
        if offer is not None and self.offer_url is not None:
            offer = {**offer, "url": self.offer_url}
        return offer


@pytest.fixture(scope="module")
def app_url(host: SessionHost) -> Iterator[tuple[str, _HostBackend]]:
    import uvicorn

    backend = _HostBackend(host)
    app = create_app(lambda: backend, HttpSettings(tokens={TOKEN: "tenant"}))  # type: ignore[arg-type,return-value]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", backend
    server.should_exit = True
    thread.join(timeout=10)


def test_the_client_moves_to_the_host_or_stays_on_the_route(
    app_url: tuple[str, _HostBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """Offered a reachable host, a stream moves there (and the host counts its steps);
    offered an unreachable one, it warns and stays on the route; both step alike. At DEBUG,
    no log line of either side carries the bearer token or a ticket."""
    caplog.set_level(logging.DEBUG)
    url, backend = app_url
    client = TempomemClient.connect(url, namespace="tenant", token=TOKEN)
    tag = uuid.uuid4().hex[:6]
    before = backend.host.stats()["stream_steps"]
    with client.stream(f"moved-{tag}") as stream:
        assert stream.direct
        moved = [stream.step(i, _tokens(i), PREFIX, top_k=4) for i in range(3)]
    assert backend.host.stats()["stream_steps"] - before == 3
    backend.offer_url = f"ws://127.0.0.1:{free_port()}{DIRECT_PATH}"
    try:
        with client.stream(f"stayed-{tag}") as stream:
            assert not stream.direct
            stayed = [stream.step(i, _tokens(i), PREFIX, top_k=4) for i in range(3)]
    finally:
        backend.offer_url = None
    assert backend.host.stats()["stream_steps"] - before == 3
    assert all(_close(a, b) for a, b in zip(moved, stayed, strict=True))
    assert "staying on the stream route" in caplog.text and backend.offer_url is None
    assert "Bearer" not in caplog.text and TOKEN not in caplog.text


# ------------------------------------------------------------------------------ on Ray Serve

RAY_NAMESPACE = f"tempomem-direct-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def served(redis_server: LocalRedisServer) -> Iterator[str]:
    settings = ServeSettings(
        app_name="tempomem-direct",
        ray_namespace=RAY_NAMESPACE,
        worker=WORKER,
        store=StoreSpec(url=redis_server.url),
        session=SessionConfig(max_lag_steps=0),
        http=HttpSettings(tokens={TOKEN: "tenant"}, max_body_bytes=MAX_MESSAGE),
        direct_stream=DirectStreamSpec(max_message_bytes=MAX_MESSAGE),
        request_timeout_s=60,
    )
    with local_serve(settings) as url:
        yield url


def test_served_streams_go_direct_and_answer_as_the_route_does(served: str) -> None:
    """Through ``tempomem serve``: a stream moves to its session host; its answers equal a
    proxied stream's (direct=False) for the same steps; replay and bad messages as on the
    route; the host's stream counters saw the direct steps."""
    client = TempomemClient.connect(served, namespace="tenant", token=TOKEN)
    tag = uuid.uuid4().hex[:6]
    with client.stream(f"d-{tag}") as direct, client.stream(f"p-{tag}", direct=False) as routed:
        assert direct.direct and not routed.direct
        pairs = [
            (direct.step(i, _tokens(i), PREFIX, top_k=4), routed.step(i, _tokens(i), PREFIX))
            for i in range(4)
        ]
        again = direct.step(2, _tokens(2), PREFIX, top_k=4)
    assert again.replayed and again.top_k_logits == pairs[2][0].top_k_logits
    for a, b in pairs:
        assert a.frames_in_memory == b.frames_in_memory and a.committed and b.committed
        assert a.top_k_ids == b.top_k_ids[:4]
    assert client.summary(f"d-{tag}").last_step_id == 3

    ws_url = served.replace("http://", "ws://") + f"/v1/sessions/b-{tag}/stream"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as route:
        offer = json.loads(route.recv(timeout=30))["direct"]
    with _open_direct(offer) as ws:
        assert json.loads(ws.recv(timeout=30))["session_id"] == f"robot/tenant/b-{tag}"
        answer_bad_messages(ws, _request(0), MAX_MESSAGE)
    steps = sum(stats["stream_steps"] for stats in _host_stats())
    assert steps >= 5  # four steps and a replay above, one good step here


def _host_stats() -> list[dict[str, Any]]:
    return [
        ray.get(ray.get_actor(actor["name"], namespace=actor["namespace"]).stats.remote())
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("tempomem/host/")
    ]


def test_a_restarted_host_closes_its_streams_and_a_new_one_continues(served: str) -> None:
    """Killing the session's host (Ray restarts it) closes the direct stream: the next step
    raises ConnectionError. A new stream lands on the restarted host, which restores the
    session from redis: every answered (write-through: committed) step is there."""
    client = TempomemClient.connect(served, namespace="tenant", token=TOKEN)
    name = f"restart-{uuid.uuid4().hex[:6]}"
    with client.stream(name) as stream:
        assert stream.direct
        answered = 0
        for i in range(3):
            stream.step(i, _tokens(i), PREFIX)
            answered += 1
        host = _host_of(name)
        pid = ray.get(host.stats.remote())["pid"]
        ray.kill(host, no_restart=False)
        with pytest.raises(ConnectionError, match="open another"):
            for i in range(3, 50):  # the close may take a moment to reach the client
                stream.step(i, _tokens(i), PREFIX)
                answered += 1
                time.sleep(0.1)
    deadline = time.monotonic() + 60
    while True:
        try:
            with client.stream(name) as stream:
                answer = stream.step(50, _tokens(50), PREFIX)
                break
        except (ConnectionError, httpx.HTTPError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert stream.direct and not answer.degraded
    assert answer.frames_in_memory == min(answered, WORKER.tempofit.capacity)
    assert ray.get(host.stats.remote())["pid"] != pid


def _host_of(name: str) -> Any:
    """The handle of the session host that holds robot ``name`` of the served app."""
    index = host_index(
        SessionId(kind="robot", namespace="tenant", id=name), ServeSettings().session_hosts
    )
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("tempomem/host/") and actor["name"].endswith(f"/{index}"):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no host {index} (of {name})")
