"""The Ray Serve application: a batched policy deployment and the HTTP ingress.

Two deployments, one application (``build_app``):

- ``PolicyDeployment`` hosts the frozen model with TempoFit (``PolicyWorker``). Session actors
  call its ``step(state, request)``; ``@serve.batch`` gathers concurrent calls (up to
  ``max_batch_size``, waiting at most ``batch_wait_timeout_s``) and ``StepEngine.run_many``
  runs those whose shapes agree as ONE forward, each session with its own memory stacked
  along the batch dim; the others run one by one. The deployment holds no session state, so
  replicas may die or scale out (``num_replicas``) without losing memory.
- ``Ingress`` mounts ``services.http_app`` (FastAPI). A request reaches the session actor
  ``tempomem/robot/{namespace}/{id}`` (detached, restartable, restoring from the store; see
  ``services.session``), which steps through ``PolicyDeployment``. Agent endpoints write to and
  read from the tenant's store namespace directly (``AgentEventLog``).

With ``WorkerSpec(placement="session")`` there is no ``PolicyDeployment``: each session actor
runs its own engine (see ``services.policy_backends``).

Session state lives in the session actors and the store. With ``store="local"`` each session
actor keeps an in-process store (lost if the actor dies, and agent logs live in the ingress
replica: one replica only); use a ``redis://`` store for anything that must survive restarts.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from kv_store import store_kind
from services.host_stream import DirectStreamSpec
from services.http_app import (
    AdviseRequest,
    AgentEventRequest,
    HttpSettings,
    create_app,
    decision_dict,
    run_sync,
)
from services.policy_worker import PolicyWorker, WorkerSpec
from services.schemas import NAME_PATTERN, SessionId
from services.session import ServeWorker, SessionConfig, StoreSpec, TenantStores
from services.session_host import HostSpec

POLICY_DEPLOYMENT = "PolicyDeployment"
DEFAULT_APP = "tempomem"
#: Agent event logs kept open per ingress replica (least recently used are closed).
MAX_OPEN_AGENT_LOGS = 1024


class ServeSettings(BaseModel):
    """Everything ``build_app`` needs; plain data, so it crosses to the replicas as JSON."""

    # Its store URL and tokens are secrets: a validation error never echoes the input.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    app_name: str = Field(default=DEFAULT_APP, pattern=NAME_PATTERN)
    ray_namespace: str = Field(
        default="tempomem", description="Ray namespace of the detached session actors."
    )
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    session: SessionConfig = Field(default_factory=SessionConfig)
    http: HttpSettings = Field(default_factory=HttpSettings)
    max_batch_size: int = Field(default=8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(
        default=0.002,
        ge=0,
        le=1,
        description="Longest wait for a batch to fill (adds to a lone step).",
    )
    #: How long the ingress holds a step for other steps bound to the same session host, so
    #: that they reach it as one call and run as one forward (``services.step_batcher``).
    step_batch_wait_s: float = Field(default=0.004, ge=0, le=0.1)
    policy_replicas: int = Field(default=1, ge=1, le=64)
    max_sessions_per_tenant: int | None = Field(
        default=1000,
        ge=1,
        description="Most robot sessions per tenant (records in the store); a new one beyond it "
        "is HTTP 429. None: no cap.",
    )
    session_hosts: int = Field(
        default=2, ge=1, le=1024, description="Session host actors sharing all sessions."
    )
    idle_evict_s: float | None = Field(
        default=600.0,
        gt=0,
        description="A session unused this long leaves memory for the store (restored on use).",
    )
    direct_stream: DirectStreamSpec | None = Field(
        default=None,
        description="Session hosts take robots' streams themselves after the stream route "
        "checked the token (services.host_stream): no HTTP proxy or ingress per step. None: "
        "every stream message goes through them.",
    )
    request_timeout_s: float = Field(default=120.0, gt=0)
    access_log: bool = Field(
        default=False, description="Serve's per-request access log lines (costly at high rates)."
    )


class PolicyDeployment:
    """The frozen model with TempoFit, stepping batches of sessions (see the module doc)."""

    def __init__(self, worker: dict[str, Any], max_batch_size: int, wait_s: float) -> None:
        self.worker = PolicyWorker(worker)
        self._step_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._step_batch.set_batch_wait_timeout_s(wait_s)  # type: ignore[attr-defined]
        self.batches: list[int] = []  # sizes of the last batches (for tests and metrics)
        self.lock = threading.Lock()

    async def step(self, state: bytes | None, request: dict[str, Any]) -> tuple[dict, bytes]:
        result = await self._step_batch((state, request))
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _step_batch(
        self, items: list[tuple[bytes | None, dict[str, Any]]]
    ) -> list[tuple[dict[str, Any], bytes] | Exception]:
        self.batches = [*self.batches[-999:], len(items)]
        return await asyncio.to_thread(self._run, items)

    def _run(
        self, items: list[tuple[bytes | None, dict[str, Any]]]
    ) -> list[tuple[dict[str, Any], bytes] | Exception]:
        with self.lock:  # one TempoFit per replica: one batch at a time
            return self.worker.step_many(items)

    def info(self) -> dict[str, Any]:
        return {**self.worker.info(), "batches": list(self.batches)}


class RayBackend:
    """``services.http_app.Backend`` over session actors and the tenant's store."""

    def __init__(self, settings: ServeSettings) -> None:
        from services.client import AsyncRayTransport, RayTransport

        self.settings = settings
        self.transport = AsyncRayTransport(
            RayTransport(
                store=settings.store,
                worker=settings.worker,
                config=settings.session,
                ray_namespace=settings.ray_namespace,
                detached=True,
                timeout_s=settings.request_timeout_s,
                hosts=HostSpec(
                    hosts=settings.session_hosts,
                    idle_evict_s=settings.idle_evict_s,
                    max_sessions_per_namespace=settings.max_sessions_per_tenant,
                    direct_stream=settings.direct_stream,
                ),
                serve_worker=None
                if settings.worker.placement == "session"
                else ServeWorker(app=settings.app_name, deployment=POLICY_DEPLOYMENT),
            ),
            step_linger_s=settings.step_batch_wait_s,
        )
        self._sessions: set[SessionId] = set()
        self._logs: OrderedDict[str, Any] = OrderedDict()
        self._stores = TenantStores(settings.store)
        self._lock = threading.Lock()
        self._advisor: Any = None

    async def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        import ray

        if len(self._sessions) < 100_000:
            self._sessions.add(session)
        try:
            return await asyncio.wait_for(
                self.transport.call(session, method, payload), self.settings.request_timeout_s
            )
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            raise ConnectionError(str(err)) from err

    async def open_stream(self, session: SessionId) -> dict[str, str] | None:
        if self.settings.direct_stream is None:
            return None
        host = self.transport.sync.handle(session)
        ticket: dict[str, str] | None = await asyncio.wait_for(
            host.open_stream.remote(session.model_dump(mode="json")),
            self.settings.request_timeout_s,
        )
        return ticket

    def _log(self, session: SessionId) -> Any:
        from services.agent_log import AgentEventLog

        with self._lock:
            log = self._logs.get(str(session))
            if log is None:
                store = self._stores.get(session.namespace)
                log = AgentEventLog(store, session.id, embedder="lexical")
                self._logs[str(session)] = log
                while len(self._logs) > MAX_OPEN_AGENT_LOGS:
                    self._logs.popitem(last=False)
            else:
                self._logs.move_to_end(str(session))
            return log

    async def agent_event(self, session: SessionId, event: AgentEventRequest) -> str:
        log = self._log(session)

        def record() -> str:
            if event.kind == "message":
                if event.message is None:
                    raise ValueError("message: required for kind 'message'")
                return str(log.record_message(event.message, t=event.t))
            if event.kind == "tool_call":
                if event.name is None:
                    raise ValueError("name: required for kind 'tool_call'")
                return str(
                    log.record_tool_call(event.name, event.arguments, event.call_id, event.t)
                )
            if event.kind == "tool_result":
                if event.call_id is None:
                    raise ValueError("call_id: required for kind 'tool_result'")
                return str(
                    log.record_tool_result(
                        event.call_id, event.content, event.name, event.t, cached=event.cached
                    )
                )
            return str(log.record_llm_start(event.model, event.t))

        return str(await run_sync(record))

    async def agent_reset(self, session: SessionId) -> bool:
        log = self._log(session)
        return bool(await run_sync(log.reset))

    async def advise(self, session: SessionId, request: AdviseRequest) -> dict[str, Any]:
        from memory.temporal import ToolCallAdvisor

        log = self._log(session)
        if self._advisor is None:
            self._advisor = ToolCallAdvisor()
        advisor = self._advisor

        def decide() -> dict[str, Any]:
            messages = log.messages()
            try:
                decision = advisor.decide(messages, request.tools, now=request.now)
            except (TypeError, KeyError, AttributeError) as err:  # malformed tool specs
                raise ValueError(f"tools: {err}") from err
            return decision_dict(decision)

        result: dict[str, Any] = await run_sync(decide)
        return result

    def info(self, namespace: str) -> dict[str, Any]:
        return {
            "model": self.settings.worker.model,
            "store": store_kind(self.settings.store.url),
            "sessions": sum(1 for s in self._sessions if s.namespace == namespace),
        }


def build_app(settings: ServeSettings) -> Any:
    """The Serve application (``serve.run(build_app(settings), name=settings.app_name)``)."""
    fastapi_app = create_app(lambda: RayBackend(settings), settings.http)
    logging = {"enable_access_log": settings.access_log}

    policy: Any = serve.deployment(
        name=POLICY_DEPLOYMENT,
        num_replicas=settings.policy_replicas,
        max_ongoing_requests=max(32, 4 * settings.max_batch_size),
        ray_actor_options={"num_cpus": 0},
        logging_config=logging,
    )(PolicyDeployment)

    @serve.deployment(
        name="Ingress",
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=256,
        logging_config=logging,
    )
    @serve.ingress(fastapi_app)
    class Ingress:
        def __init__(self, policy_handle: Any = None) -> None:
            self.policy = policy_handle

    ingress: Any = Ingress
    if settings.worker.placement == "session":  # each session actor runs its own engine
        return ingress.bind()
    return ingress.bind(
        policy.bind(
            settings.worker.model_dump(mode="json"),
            settings.max_batch_size,
            settings.batch_wait_timeout_s,
        )
    )
