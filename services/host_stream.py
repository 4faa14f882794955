"""Direct streams: a session host takes its robots' WebSockets itself.

Through the HTTP proxy, every step of a stream costs the proxy, the ingress and a Ray call to
the session host a share of the CPU (about 4 ms of the 9 ms a step cost on 2 cores,
BENCHMARKS.md). With ``HostSpec.direct_stream`` set, each session host also runs a small
WebSocket server (``HostStreamServer``, in a thread of the host's process) and the stream
route hands robots over to it:

1. The robot opens ``/v1/sessions/{id}/stream`` as before: the ingress checks its token and
   namespace, then asks the session's host for a **ticket** (``SessionHost.open_stream``): 32
   random bytes, good for one connection to that one session, for ``ticket_ttl_s``. The
   greeting carries ``"direct": {"url": "ws://HOST:PORT/v1/stream", "ticket": ...}``.
2. The robot connects to that URL with ``Authorization: Bearer <ticket>``; the host redeems
   the ticket (once) and greets it as the route does. With ``certfile``/``keyfile`` the
   host's server speaks TLS and its URL is ``wss://``. From then on each message goes straight
   to the host, where steps that arrive together run as one ``step_many`` (one forward).

The messages, validation, idempotency by step id and error answers are the route's own
(``services.stream_protocol``). The tenant is the one the ingress checked: a ticket names its
session, and a direct stream can step nothing else. A ticket never appears in a log line or
an error. A client that cannot reach the URL (or cannot verify its certificate), or whose
route is ``wss://`` while the URL is not, stays on the proxied stream. A lost host (its node
gone) closes its streams; the robot opens the stream route again and lands on the host Ray
restarted.

Bounds: ``max_connections`` open streams per host (more are refused with 503),
``MAX_TICKETS`` outstanding tickets per host, messages of ``max_message_bytes`` (answered 413
above it; a frame four times larger closes the connection, code 1009), an unauthenticated
connection is closed after ``handshake_timeout_s``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.schemas import SessionId, StepRequest
from services.step_batcher import StepBatcher
from services.stream_protocol import answer_message, dumps, greeting, quiet_logger, refusal

log = logging.getLogger(__name__)

DIRECT_PATH = "/v1/stream"
#: Tickets a host keeps outstanding at most (each is a few hundred bytes).
MAX_TICKETS = 10_000
#: WebSocket close codes: policy violation (bad ticket), try again later (host full).
CLOSE_POLICY, CLOSE_TRY_LATER = 1008, 1013

#: ``step_many([(session, request), ...])``: the answers (a response dict or an exception each).
StepMany = Callable[[list[tuple[SessionId, StepRequest]]], Sequence[Any]]


class DirectStreamSpec(BaseModel):
    """Where and how the session hosts take robots' streams themselves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bind: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=255,
        description="Interface each host's stream server binds: 127.0.0.1 on one machine, "
        "0.0.0.0 on a cluster whose robots reach the nodes (ports are picked per host).",
    )
    advertise: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Address handed to clients; default: bind, or the node's IP for 0.0.0.0.",
    )
    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_connections: int = Field(default=1024, ge=1, le=65536, description="Per host.")
    ticket_ttl_s: float = Field(default=30.0, gt=0, le=3600)
    handshake_timeout_s: float = Field(default=10.0, gt=0, le=600)
    linger_s: float = Field(
        default=0.002,
        ge=0,
        le=0.1,
        description="How long a step waits for others to share its forward (StepBatcher).",
    )
    certfile: str | None = Field(
        default=None,
        max_length=4096,
        description="TLS: a PEM certificate (chain) for the advertised address, readable on "
        "every node; the streams are then wss://. None: plain ws://.",
    )
    keyfile: str | None = Field(
        default=None, max_length=4096, description="TLS: the certificate's private key (PEM)."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> DirectStreamSpec:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: give both for wss://, or neither")
        return self

    def tls(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain ws://."""
        if self.certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context


class HostStreamServer:
    """One session host's WebSocket server (see the module doc); starts on the first
    ``ticket`` and runs as long as the host's process. Thread-safe; ``step_many`` runs in one
    worker thread, a batch at a time."""

    def __init__(self, step_many: StepMany, spec: DirectStreamSpec) -> None:
        self.spec = spec
        self._step_many = step_many
        self._tickets: dict[str, tuple[SessionId, float]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._url = ""
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "tempomem-stream-step")
        self._batcher: StepBatcher | None = None
        self.open_connections = 0
        self.counts = {"connections": 0, "refused": 0, "steps": 0}

    def stats(self) -> dict[str, int]:
        """Streams open now, taken and refused so far, and the steps they carried."""
        return {"open": self.open_connections, **self.counts}

    # ---------------------------------------------------------------------------- tickets

    def ticket(self, session: SessionId) -> dict[str, str]:
        """The URL of this host's server and a one-use ticket for ``session``.
        ``ConnectionError`` when ``MAX_TICKETS`` are outstanding."""
        if session.kind != "robot":
            raise ValueError(f"streams step robot sessions, not {session.kind!r} ones")
        self._start()
        now = time.monotonic()
        with self._lock:
            if len(self._tickets) >= MAX_TICKETS:
                self._tickets = {t: v for t, v in self._tickets.items() if v[1] > now}
                if len(self._tickets) >= MAX_TICKETS:
                    raise ConnectionError(
                        f"{MAX_TICKETS} stream tickets are outstanding on this host; try later"
                    )
            ticket = secrets.token_urlsafe(32)
            self._tickets[ticket] = (session, now + self.spec.ticket_ttl_s)
        return {"url": self._url, "ticket": ticket}

    def _redeem(self, authorization: str | None) -> SessionId | None:
        scheme, _, ticket = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not ticket:
            return None
        with self._lock:
            found = self._tickets.pop(ticket.strip(), None)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    # ---------------------------------------------------------------------------- server

    def _start(self) -> None:
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="tempomem-stream")
            thread.daemon = True
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=30)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                raise
            self._loop = loop

    async def _listen(self) -> None:
        from websockets.asyncio.server import serve

        spec = self.spec
        tls = spec.tls()
        self._server = await serve(
            self._connection,
            spec.bind,
            0,
            compression=None,
            max_size=4 * spec.max_message_bytes,
            open_timeout=spec.handshake_timeout_s,
            logger=quiet_logger("server"),
            ssl=tls,
        )
        port = self._server.sockets[0].getsockname()[1]
        address = spec.advertise or _advertised(spec.bind)
        host = f"[{address}]" if ":" in address else address
        self._url = f"{'ws' if tls is None else 'wss'}://{host}:{port}{DIRECT_PATH}"
        self._batcher = StepBatcher(self._send, linger_s=spec.linger_s)

    async def _send(self, items: list[tuple[SessionId, StepRequest]]) -> Sequence[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._step_many, items)

    async def _connection(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        request = ws.request
        session = None
        if request is not None and request.path == DIRECT_PATH:
            session = self._redeem(request.headers.get("Authorization"))
        if session is None:
            self.counts["refused"] += 1
            await ws.send(refusal(401, "the stream ticket is missing, used, expired or unknown"))
            await ws.close(CLOSE_POLICY)
            return
        if self.open_connections >= self.spec.max_connections:
            self.counts["refused"] += 1
            await ws.send(refusal(503, "this session host has too many open streams"))
            await ws.close(CLOSE_TRY_LATER)
            return
        self.open_connections += 1
        self.counts["connections"] += 1
        bound: SessionId = session

        async def step(request: StepRequest) -> dict[str, Any]:
            return await self._step(bound, request)

        try:
            await ws.send(greeting(str(session)))
            async for raw in ws:
                answer = await answer_message(raw, self.spec.max_message_bytes, step)
                await ws.send(dumps(answer))
        except ConnectionClosed:
            pass
        finally:
            self.open_connections -= 1

    async def _step(self, session: SessionId, request: StepRequest) -> dict[str, Any]:
        assert self._batcher is not None  # set in _listen, before any connection
        answer: dict[str, Any] = await self._batcher.submit((session, request))
        self.counts["steps"] += 1
        return answer


def _advertised(bind: str) -> str:
    """The address clients reach a server bound to ``bind`` at."""
    if bind not in ("0.0.0.0", "::", ""):
        return bind
    import ray

    return str(ray.util.get_node_ip_address())
