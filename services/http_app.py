"""The HTTP API: a FastAPI app (pydantic schemas, OpenAPI at ``/openapi.json``) over a backend.

Routes (all JSON; ``{id}`` is a session id: ``[A-Za-z0-9_.-]{1,64}``, a letter or digit first):

- ``POST /v1/sessions/{id}/reset``, ``POST /v1/sessions/{id}/step``,
  ``GET /v1/sessions/{id}/elapsed``, ``GET /v1/sessions/{id}/summary``,
  ``GET /v1/sessions/{id}/metrics``, ``POST /v1/sessions/{id}/flush``,
  ``DELETE /v1/sessions/{id}``: robot sessions. Only step and reset create a session (up to
  the tenant's cap, else 429); the others answer 404 for an unknown session.
- ``POST /v1/agents/{id}/events`` (record a message, tool call, tool result or LLM start),
  ``POST /v1/agents/{id}/advise`` (``ToolCallAdvisor.decide`` on the session's log) and
  ``POST /v1/agents/{id}/reset`` (forget the session's events).
- ``GET /healthz`` (no auth: ``{"status": "ok"}`` and nothing else), ``GET /v1/info`` (the
  model, the store's kind and the tenant's own session count), ``GET /metrics`` (Prometheus).

Tenancy. Every session belongs to a namespace (tenant). With tokens configured
(``HttpSettings.tokens``: bearer token -> namespace) the namespace is the token's: a request
without a valid ``Authorization: Bearer <token>`` gets 401, and an ``X-Tempomem-Namespace``
header naming another namespace gets 403. So tenant A's token can never reach tenant B's
sessions, whose actors and store keys are B's own (``SessionId.namespace``). Without tokens
(development, loopback only) the namespace is the ``X-Tempomem-Namespace`` header, default
``"default"``: isolation by declaration, not a security boundary. ``/metrics`` needs a valid
token when tokens are set (it aggregates all tenants' counts); ``/healthz`` never does, and so
tells nothing but that the service is up. No response carries a store URL or a credential.

Limits and errors. Bodies over ``max_body_bytes`` (default 1 MiB; a step is at most ~0.3 MB of
JSON) get 413 before they are parsed. Malformed requests get 422 whose ``detail`` names the
field (FastAPI's ``loc``; a token id beyond the model's vocabulary names ``input_ids[i]``), also
for inputs JSON cannot carry back (NaN, Infinity, numbers beyond a float). A
store outage never fails a step: it comes back ``degraded: true`` (memoryless) and counts in
``tempomem_degraded_steps_total``; agent endpoints, which are nothing but the store, answer 503.
A session or policy that cannot be reached in time answers 503. A step id that conflicts with
what the session answered (a retry with another body, an id not above the last) answers 409.

The backend (``Backend``) does the work; ``services.deployment`` provides the Ray one (session
actors + the batched policy deployment) and mounts this app as the Serve ingress.
"""

import asyncio
import hmac
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from services.schemas import (
    AGENT_ID_PATTERN,
    NAME_PATTERN,
    NAMESPACE_HEADER,
    ElapsedResponse,
    ResetRequest,
    ResetResponse,
    SessionId,
    SessionLimitReached,
    SessionNotFound,
    SessionSummary,
    StepConflict,
    StepRequest,
    StepResponse,
)

DEFAULT_NAMESPACE = "default"
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Upper bounds (seconds) of the step latency histogram buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_TOOLS = 128

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")


def check_token(token: str, where: str = "token") -> str:
    """A bearer token is 16..512 URL-safe characters (RFC 6750's token68 alphabet, no ':').
    The error never shows the token."""
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(
            f"{where}: a token needs {MIN_TOKEN_CHARS}..{MAX_TOKEN_CHARS} characters, "
            f"this one has {len(token)}"
        )
    if not _TOKEN_PATTERN.fullmatch(token):
        raise ValueError(f"{where}: a token may hold only letters, digits and ._~+/=-")
    return token


class HttpSettings(BaseModel):
    """Authentication and limits of the HTTP app."""

    # Tokens are secrets: never in a repr or in a validation error's echo of the input.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    tokens: dict[str, Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=dict,
        repr=False,
        description="Bearer token -> namespace. Empty: no auth; namespace from the header.",
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=64 << 20)

    @field_validator("tokens")
    @classmethod
    def _strong_tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        for number, token in enumerate(tokens, start=1):
            check_token(token, f"token #{number}")
        return tokens


# ------------------------------------------------------------------------------ agent schemas


class AgentEventRequest(BaseModel):
    """One agent event (see ``services.agent_log.AgentEventLog``); fields by ``kind``:
    ``message`` needs ``message``; ``tool_call`` needs ``name`` (``arguments``, ``call_id``
    optional); ``tool_result`` needs ``call_id`` and ``content`` (``name``, ``cached``);
    ``llm_start`` takes ``model``. ``t``: seconds since the epoch or ISO-8601; default now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["message", "tool_call", "tool_result", "llm_start"]
    message: dict[str, JsonValue] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=128)
    arguments: dict[str, JsonValue] | str | None = None
    call_id: str | None = Field(default=None, min_length=1, max_length=128)
    content: JsonValue = None
    cached: bool = False
    model: str | None = Field(default=None, max_length=128)
    t: float | str | None = Field(default=None, description="Epoch seconds or ISO-8601.")


class AgentEventResponse(BaseModel):
    session_id: str
    id: str = Field(description="The event id (or, for tool_call, the call id).")


class AdviseRequest(BaseModel):
    """Advice on the session's last user message: call a tool, or answer directly?"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tools: list[dict[str, JsonValue]] = Field(
        default_factory=list, max_length=MAX_TOOLS, description="OpenAI function specs."
    )
    now: float | str | None = Field(default=None, description="Epoch seconds or ISO-8601.")


class AdviseResponse(BaseModel):
    session_id: str
    call_tool: bool
    tool: str | None
    age_s: float | None
    horizon_s: float | None
    coverage: bool | None = None
    reason: str
    volatility: str | None = None
    horizon_source: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Info(BaseModel):
    """What a tenant may know of the service."""

    model: str
    store: str = Field(description="The store's kind: 'redis', 'rediss' or 'local'.")
    sessions: int = Field(description="This tenant's sessions this replica has addressed.")
    uptime_s: float


# ------------------------------------------------------------------------------ backend


class Backend(Protocol):
    """What the app needs: sessions by ``SessionId`` and agent logs by namespace."""

    async def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        """Run ``method`` (step, reset, elapsed, summary, metrics, flush) on the session;
        raises ValueError for a bad request, TimeoutError/ConnectionError if unreachable."""
        ...

    async def agent_event(self, session: SessionId, event: AgentEventRequest) -> str: ...

    async def agent_reset(self, session: SessionId) -> bool:
        """Forget every event of the agent session; True if there were any."""
        ...

    async def advise(self, session: SessionId, request: AdviseRequest) -> dict[str, Any]: ...

    def info(self, namespace: str) -> dict[str, Any]:
        """``model``, ``store`` (its kind, never its URL) and ``sessions`` of ``namespace``."""
        ...


class ServiceUnavailable(Exception):
    """The backend could not be reached (answered as 503)."""


# ------------------------------------------------------------------------------ metrics


class Metrics:
    """Counters and a histogram in the Prometheus text format (this process's view)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.steps = 0
        self.degraded_steps = 0
        self.replayed_steps = 0
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def step(self, response: StepResponse, seconds: float) -> None:
        with self._lock:
            self.steps += 1
            self.degraded_steps += int(response.degraded)
            self.replayed_steps += int(response.replayed)
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP tempomem_steps_total Steps answered over HTTP (replays included).",
                "# TYPE tempomem_steps_total counter",
                f"tempomem_steps_total {self.steps}",
                "# HELP tempomem_degraded_steps_total Steps that ran memoryless (store down).",
                "# TYPE tempomem_degraded_steps_total counter",
                f"tempomem_degraded_steps_total {self.degraded_steps}",
                "# HELP tempomem_replayed_steps_total Steps answered from the replay window.",
                "# TYPE tempomem_replayed_steps_total counter",
                f"tempomem_replayed_steps_total {self.replayed_steps}",
                "# HELP tempomem_step_latency_seconds Step latency inside the HTTP app.",
                "# TYPE tempomem_step_latency_seconds histogram",
            ]
            for bound, count in zip(LATENCY_BUCKETS, self.buckets, strict=True):
                lines.append(f'tempomem_step_latency_seconds_bucket{{le="{bound}"}} {count}')
            lines += [
                f'tempomem_step_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                f"tempomem_step_latency_seconds_sum {self.latency_sum:.6f}",
                f"tempomem_step_latency_seconds_count {self.latency_count}",
                "# HELP tempomem_http_requests_total HTTP requests by method, route, status.",
                "# TYPE tempomem_http_requests_total counter",
            ]
            for (method, route, status), count in sorted(self.requests.items()):
                lines.append(
                    f'tempomem_http_requests_total{{method="{method}",route="{route}",'
                    f'status="{status}"}} {count}'
                )
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ middleware


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (declared or streamed), before any
    parsing; counts every response in ``metrics``."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_seen: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(int(message["status"]))
            await send(message)

        try:
            await self._handle(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.request(
                scope.get("method", "?"), path, status_seen[0] if status_seen else 500
            )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _too_large(send, "invalid Content-Length")
                    return
                if declared > self.max_bytes:
                    await _too_large(send, f"body of {declared} bytes > {self.max_bytes}")
                    return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _too_large(send, f"body over {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, detail: str) -> None:
    body = JSONResponse({"detail": f"request body too large: {detail}"}).body
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------ the app

SessionPath = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN,
        description="Session id; [A-Za-z0-9_.-]{1,64}, starting with a letter or digit.",
    ),
]
AgentPath = Annotated[
    str,
    Path(
        pattern=AGENT_ID_PATTERN,
        description="Agent session id; [A-Za-z0-9_.-]{1,64}, starting with a letter or digit.",
    ),
]


def _error_text(err: BaseException) -> str:
    """The user-facing message of a (possibly Ray-wrapped) error: its cause, first line(s)."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip()
    return text[:2000] or type(cause).__name__


def create_app(
    backend_factory: Callable[[], Backend],
    settings: HttpSettings | None = None,
    *,
    title: str = "tempomem",
) -> FastAPI:
    """The FastAPI app. ``backend_factory`` is called once, on the first request that needs
    it, in the process that serves it (a Serve replica)."""
    settings = settings or HttpSettings()
    metrics = Metrics()
    app = FastAPI(
        title=title,
        version="1",
        description=(__doc__ or "").split("\n\n", 1)[0],
    )
    state: dict[str, Any] = {"backend": None, "started": time.time()}
    lock = threading.Lock()

    def backend() -> Backend:
        if state["backend"] is None:
            with lock:
                if state["backend"] is None:
                    state["backend"] = backend_factory()
        found: Backend = state["backend"]
        return found

    def namespace_of(request: Request) -> str:
        header = request.headers.get(NAMESPACE_HEADER)
        if settings.tokens:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            namespace = None
            if scheme.lower() == "bearer" and token:
                for known, ns in settings.tokens.items():
                    if hmac.compare_digest(known.encode(), token.strip().encode()):
                        namespace = ns
            if namespace is None:
                raise HTTPException(
                    401,
                    "missing or invalid bearer token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if header is not None and header != namespace:
                raise HTTPException(403, f"this token belongs to another namespace than {header!r}")
            return namespace
        namespace = header or DEFAULT_NAMESPACE
        try:
            SessionId(kind="robot", namespace=namespace, id="probe")
        except ValueError:
            raise HTTPException(
                422, f"header {NAMESPACE_HEADER} must match {NAME_PATTERN}"
            ) from None
        return namespace

    Namespace = Annotated[str, Depends(namespace_of)]

    async def call(session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        try:
            return await backend().call(session, method, payload)
        except (TimeoutError, ConnectionError, ServiceUnavailable) as err:
            raise HTTPException(503, f"session {session} unavailable: {_error_text(err)}") from err
        except StepConflict as err:
            raise HTTPException(409, _error_text(err)) from err
        except SessionNotFound as err:
            raise HTTPException(404, _error_text(err)) from err
        except SessionLimitReached as err:
            raise HTTPException(429, _error_text(err)) from err
        except ValueError as err:
            raise HTTPException(422, _error_text(err)) from err

    def robot(namespace: str, session_id: str) -> SessionId:
        return SessionId(kind="robot", namespace=namespace, id=session_id)

    def agent(namespace: str, session_id: str) -> SessionId:
        return SessionId(kind="agent", namespace=namespace, id=session_id)

    @app.post("/v1/sessions/{session_id}/step", response_model=StepResponse, tags=["robot"])
    async def step(session_id: SessionPath, body: StepRequest, namespace: Namespace) -> Any:
        """One control step of a robot session (memory loaded, frame remembered)."""
        start = time.perf_counter()
        payload = body.model_dump(mode="json")
        result = StepResponse.model_validate(
            await call(robot(namespace, session_id), "step", payload)
        )
        metrics.step(result, time.perf_counter() - start)
        return result

    @app.post("/v1/sessions/{session_id}/reset", response_model=ResetResponse, tags=["robot"])
    async def reset(
        session_id: SessionPath, namespace: Namespace, body: ResetRequest | None = None
    ) -> Any:
        """Start a new episode: empty memory, step ids from 0."""
        payload = (body or ResetRequest()).model_dump(mode="json")
        return await call(robot(namespace, session_id), "reset", payload)

    @app.get("/v1/sessions/{session_id}/elapsed", response_model=ElapsedResponse, tags=["robot"])
    async def elapsed(session_id: SessionPath, namespace: Namespace) -> Any:
        """Seconds since the session's last step and since its episode began."""
        return await call(robot(namespace, session_id), "elapsed", None)

    @app.get("/v1/sessions/{session_id}/summary", response_model=SessionSummary, tags=["robot"])
    async def summary(session_id: SessionPath, namespace: Namespace) -> Any:
        """What the session actor holds now (episode, step ids, frames, degraded...)."""
        return await call(robot(namespace, session_id), "summary", None)

    @app.get("/v1/sessions/{session_id}/metrics", response_model=dict[str, int], tags=["robot"])
    async def session_metrics(session_id: SessionPath, namespace: Namespace) -> Any:
        """The session actor's counters (steps, degraded_steps, writes...)."""
        return await call(robot(namespace, session_id), "metrics", None)

    @app.delete("/v1/sessions/{session_id}", response_model=bool, tags=["robot"])
    async def delete(session_id: SessionPath, namespace: Namespace) -> Any:
        """End a session: its memory, store record and actor (404 if it does not exist)."""
        return await call(robot(namespace, session_id), "delete", None)

    @app.post("/v1/sessions/{session_id}/flush", response_model=bool, tags=["robot"])
    async def flush(session_id: SessionPath, namespace: Namespace) -> Any:
        """Wait until every answered step is committed to the store."""
        return await call(robot(namespace, session_id), "flush", None)

    async def agent_call(fn: Callable[[], Awaitable[Any]]) -> Any:
        from kv_store import StoreUnavailable

        try:
            return await fn()
        except StoreUnavailable as err:
            raise HTTPException(503, f"store unavailable: {_error_text(err)}") from err
        except (TimeoutError, ConnectionError, ServiceUnavailable) as err:
            raise HTTPException(503, _error_text(err)) from err
        except ValueError as err:
            raise HTTPException(422, _error_text(err)) from err

    @app.post("/v1/agents/{session_id}/events", response_model=AgentEventResponse, tags=["agent"])
    async def agent_event(
        session_id: AgentPath, body: AgentEventRequest, namespace: Namespace
    ) -> Any:
        """Record one event of an agent session (timestamped, in the session's stream)."""
        session = agent(namespace, session_id)
        event_id = await agent_call(lambda: backend().agent_event(session, body))
        return AgentEventResponse(session_id=str(session), id=event_id)

    @app.post("/v1/agents/{session_id}/reset", response_model=bool, tags=["agent"])
    async def agent_reset(session_id: AgentPath, namespace: Namespace) -> Any:
        """Forget every event of an agent session (true if there were any)."""
        session = agent(namespace, session_id)
        return await agent_call(lambda: backend().agent_reset(session))

    @app.post("/v1/agents/{session_id}/advise", response_model=AdviseResponse, tags=["agent"])
    async def advise(session_id: AgentPath, body: AdviseRequest, namespace: Namespace) -> Any:
        """Should the agent call a tool for the last user message, or answer directly?"""
        session = agent(namespace, session_id)
        decision = await agent_call(lambda: backend().advise(session, body))
        return AdviseResponse(session_id=str(session), **decision)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Any:
        """Liveness; no authentication, so nothing but the status."""
        return Health(status="ok")

    @app.get("/v1/info", response_model=Info, tags=["ops"])
    async def info(namespace: Namespace) -> Any:
        """The model, the store's kind and this tenant's session count."""
        return Info(uptime_s=time.time() - state["started"], **backend().info(namespace))

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    async def prometheus(request: Request) -> PlainTextResponse:
        """Prometheus text format (this replica's counters)."""
        if settings.tokens:
            namespace_of(request)
        return PlainTextResponse(
            metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.exception_handler(RequestValidationError)
    async def unprocessable(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": json_safe(err.errors())}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.state.metrics = metrics
    return app


def json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot hold made printable: non-finite floats become the
    strings ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``, other objects their ``str()``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def decision_dict(decision: Any) -> dict[str, Any]:
    """A ``memory.temporal.Decision`` as JSON-safe fields of ``AdviseResponse``."""
    fields = ("call_tool", "tool", "age_s", "horizon_s", "coverage", "reason")
    out = {name: getattr(decision, name) for name in fields}
    out["volatility"] = getattr(decision, "volatility", None)
    out["horizon_source"] = getattr(decision, "horizon_source", None)
    for name in ("age_s", "horizon_s"):
        value = out[name]
        if value is not None and not math.isfinite(float(value)):
            out[name] = None
    return out


async def run_sync(fn: Callable[[], Any]) -> Any:
    """Run blocking work (store calls) off the event loop."""
    return await asyncio.to_thread(fn)
