"""The HTTP API: a FastAPI app (pydantic schemas, OpenAPI at ``/openapi.json``) over a backend.

Routes (all JSON; ``{id}`` is a session id: ``[A-Za-z0-9_.-]{1,64}``, a letter or digit first):

- ``POST /v1/sessions/{id}/reset``, ``POST /v1/sessions/{id}/step``,
  ``GET /v1/sessions/{id}/elapsed``, ``GET /v1/sessions/{id}/summary``,
  ``GET /v1/sessions/{id}/metrics``, ``POST /v1/sessions/{id}/flush``,
  ``DELETE /v1/sessions/{id}``: robot sessions. Only step and reset create a session (up to
  the tenant's cap, else 429); the others answer 404 for an unknown session.
- ``/v1/sessions/{id}/stream`` (WebSocket): the step route for a control loop, one connection
  per robot and one JSON message per step; same auth, validation, idempotency and error codes
  (``services.http_stream``).
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
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from services.agent_schemas import (
    AdviseRequest,
    AdviseResponse,
    AgentEventRequest,
    AgentEventResponse,
    decision_dict,
)
from services.body_limit import BodyLimit
from services.http_auth import HttpSettings, Tenancy, check_token
from services.http_metrics import Metrics
from services.http_stream import add_stream_route
from services.json_safe import json_safe
from services.schemas import (
    AGENT_ID_PATTERN,
    NAME_PATTERN,
    ElapsedResponse,
    ResetRequest,
    ResetResponse,
    SessionId,
    SessionSummary,
    StepRequest,
    StepResponse,
    error_status,
    error_text,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ agent schemas


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

    async def open_stream(self, session: SessionId) -> dict[str, str] | None:
        """The session host's direct stream (``{"url", "ticket"}``), or None where hosts
        take no streams (``services.host_stream``)."""
        ...

    async def agent_event(self, session: SessionId, event: AgentEventRequest) -> str: ...

    async def agent_reset(self, session: SessionId) -> bool:
        """Forget every event of the agent session; True if there were any."""
        ...

    async def advise(self, session: SessionId, request: AdviseRequest) -> dict[str, Any]: ...

    def info(self, namespace: str) -> dict[str, Any]:
        """``model``, ``store`` (its kind, never its URL) and ``sessions`` of ``namespace``."""
        ...


class ServiceUnavailable(ConnectionError):
    """The backend could not be reached (answered as 503)."""


# ------------------------------------------------------------------------------ metrics


# ------------------------------------------------------------------------------ middleware


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

    namespace_of = Tenancy(settings.tokens)
    Namespace = Annotated[str, Depends(namespace_of)]

    async def call(session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        try:
            return await backend().call(session, method, payload)
        except Exception as err:
            status = error_status(err)
            if status is None:
                raise
            text = error_text(err)
            detail = f"session {session} unavailable: {text}" if status == 503 else text
            raise HTTPException(status, detail) from err

    def robot(namespace: str, session_id: str) -> SessionId:
        return SessionId(kind="robot", namespace=namespace, id=session_id)

    def agent(namespace: str, session_id: str) -> SessionId:
        return SessionId(kind="agent", namespace=namespace, id=session_id)

    async def run_step(namespace: str, session_id: str, body: StepRequest) -> StepResponse:
        """One step, for the step route and the stream route alike."""
        start = time.perf_counter()
        payload = body.model_dump(mode="json")
        result = StepResponse.model_validate(
            await call(robot(namespace, session_id), "step", payload)
        )
        metrics.step(result, time.perf_counter() - start)
        return result

    @app.post("/v1/sessions/{session_id}/step", response_model=StepResponse, tags=["robot"])
    async def step(session_id: SessionPath, body: StepRequest, namespace: Namespace) -> Any:
        """One control step of a robot session (memory loaded, frame remembered)."""
        return await run_step(namespace, session_id, body)

    async def open_direct(namespace: str, session_id: str) -> dict[str, str] | None:
        """The host's direct stream; None (the robot stays here) if the host cannot say."""
        try:
            return await backend().open_stream(robot(namespace, session_id))
        except Exception as err:  # the proxied stream still works
            log.warning("no direct stream for %s/%s: %s", namespace, session_id, error_text(err))
            return None

    # The same step over one WebSocket per robot (services.http_stream).
    add_stream_route(
        app, run_step, namespace_of, metrics, settings.max_body_bytes, open_direct=open_direct
    )

    @app.post("/v1/sessions/{session_id}/reset", response_model=ResetResponse, tags=["robot"])
    async def reset(
        session_id: SessionPath, namespace: Namespace, body: ResetRequest | None = None
    ) -> Any:
        """Start a new episode: empty memory, step ids from 0."""
        payload = (body or ResetRequest()).model_dump(mode="json")
        return await call(robot(namespace, session_id), "reset", payload)

    def session_route(method: str) -> Callable[[str, str], Awaitable[Any]]:
        async def route(session_id: SessionPath, namespace: Namespace) -> Any:
            return await call(robot(namespace, session_id), method, None)

        return route

    # The robot-session routes without a body, each one method of the session:
    # (HTTP verb, path under /v1/sessions/{session_id}, session method, response model,
    # route name (its OpenAPI summary and operation id), description).
    for verb, suffix, method, response_model, name, description in (
        (
            "GET",
            "/elapsed",
            "elapsed",
            ElapsedResponse,
            "elapsed",
            "Seconds since the session's last step and since its episode began.",
        ),
        (
            "GET",
            "/summary",
            "summary",
            SessionSummary,
            "summary",
            "What the session actor holds now (episode, step ids, frames, degraded...).",
        ),
        (
            "GET",
            "/metrics",
            "metrics",
            dict[str, int],
            "session_metrics",
            "The session actor's counters (steps, degraded_steps, writes...).",
        ),
        (
            "DELETE",
            "",
            "delete",
            bool,
            "delete",
            "End a session: its memory, store record and actor (404 if it does not exist).",
        ),
        (
            "POST",
            "/flush",
            "flush",
            bool,
            "flush",
            "Wait until every answered step is committed to the store.",
        ),
    ):
        app.add_api_route(
            "/v1/sessions/{session_id}" + suffix,
            session_route(method),
            methods=[verb],
            response_model=response_model,
            tags=["robot"],
            name=name,
            description=description,
        )

    async def agent_call(fn: Callable[[], Awaitable[Any]]) -> Any:
        from kv_store import StoreUnavailable

        try:
            return await fn()
        except StoreUnavailable as err:
            raise HTTPException(503, f"store unavailable: {error_text(err)}") from err
        except (TimeoutError, ConnectionError) as err:  # ServiceUnavailable among them
            raise HTTPException(503, error_text(err)) from err
        except ValueError as err:
            raise HTTPException(422, error_text(err)) from err

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
            namespace_of(request)  # 401/403 unless the token is valid
        return PlainTextResponse(
            metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.exception_handler(RequestValidationError)
    async def unprocessable(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": json_safe(err.errors())}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.state.metrics = metrics
    return app


async def run_sync(fn: Callable[[], Any]) -> Any:
    """Run blocking work (store calls) off the event loop."""
    return await asyncio.to_thread(fn)


__all__ = [
    "AdviseRequest",
    "AdviseResponse",
    "AgentEventRequest",
    "AgentEventResponse",
    "Backend",
    "HttpSettings",
    "ServiceUnavailable",
    "check_token",
    "create_app",
    "decision_dict",
    "json_safe",
    "run_sync",
]
