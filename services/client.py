"""Clients a controller or agent uses: ``TempomemClient`` (sync) and ``AsyncTempomemClient``.

A client is bound to ONE tenant (``namespace``): it builds actor names and store namespaces
from it, and refuses a ``SessionId`` of another namespace (``PermissionError``), so a tenant's
client cannot reach another tenant's sessions or keys. (In-cluster this is isolation by
construction, not a security boundary: code with raw Ray access can look up any named actor.
The HTTP transport, later, is where authentication belongs.)

Requests are validated in the caller's process (``pydantic.ValidationError`` naming the field)
before anything is sent, and again by the session actor.

Transport seam: both clients talk to sessions only through ``call(session, method, payload)``
on a transport object. ``RayTransport`` / ``AsyncRayTransport`` reach session actors through
Ray actor handles (the process must be connected to the cluster: ``ray.init(...)``);
``HttpTransport`` / ``AsyncHttpTransport`` reach a ``tempomem serve`` over HTTP (httpx), with
an optional bearer token; ``TempomemClient.connect(url, ...)`` builds one. Over HTTP the server
decides the tenant from the token (see ``services.http_app``); the client also sends its
namespace in ``X-Tempomem-Namespace``, and a mismatch is a ``PermissionError`` (403).

HTTP errors map to Python ones: 401/403 ``PermissionError``, 404 ``LookupError``, 413 and 422
``ValueError`` (the server's detail, naming the field), 503 and other failures
``TempomemHTTPError`` (a ``RuntimeError`` with ``status`` and ``detail``).

``client.stream(session)`` (HTTP clients only) steps one robot over one WebSocket instead of a
request per step (``services.stream_client``, protocol in ``services.http_stream``); its
errors are the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Protocol,
    Self,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
)

from services.async_twin import async_twin_of
from services.schemas import (
    ERROR_STATUS,
    NAMESPACE_HEADER,
    ElapsedResponse,
    ResetRequest,
    ResetResponse,
    SessionId,
    SessionKind,
    SessionSummary,
    StepRequest,
    StepResponse,
)
from services.step_batcher import StepBatcher

# Ray, torch and the session machinery load only with a Ray transport: an HTTP-only client (a
# robot controller) imports in a fraction of a second instead of several.
if TYPE_CHECKING:
    from services.policy_worker import ModelFactory, WorkerSpec
    from services.session import ServeWorker, SessionConfig, StoreSpec
    from services.session_host import HostSpec
    from services.stream_client import AsyncStepStream, StepStream, StreamCore


class Transport(Protocol):
    """How a sync client reaches a session: one call, JSON in, JSON out."""

    def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any: ...


class AsyncTransport(Protocol):
    async def call(
        self, session: SessionId, method: str, payload: dict[str, Any] | None
    ) -> Any: ...


class RayTransport:
    """Sessions on session hosts through Ray (``services.session_host``): a session's calls go
    to the host that ``host_index`` picks among ``hosts.hosts``; host handles are cached.

    Only ``step`` and ``reset`` create a session; reads and ``delete`` of an unknown session
    raise ``SessionNotFound``, a session beyond the tenant's cap ``SessionLimitReached``.

    Args:
        store, worker, config, worker_factory, detached: how a host (and the sessions on it)
            is created when it does not exist yet (see ``services.session_host.host_handle``).
        hosts: the host pool (``HostSpec``); every process of a deployment must agree on it.
        ray_namespace: Ray namespace of the host and worker actors (default: the namespace
            this process joined with ``ray.init(namespace=...)``).
        timeout_s: longest wait for one call.
        serve_worker: sessions step through this Serve deployment (see ``ServeWorker``).
    """

    def __init__(
        self,
        *,
        store: StoreSpec,
        worker: WorkerSpec,
        config: SessionConfig | None = None,
        worker_factory: ModelFactory | None = None,
        ray_namespace: str | None = None,
        detached: bool = False,
        timeout_s: float = 120.0,
        serve_worker: ServeWorker | None = None,
        hosts: HostSpec | None = None,
    ) -> None:
        import ray

        from services.session_host import HostSpec, pool_id

        if not ray.is_initialized():
            raise RuntimeError("RayTransport needs a Ray connection: call ray.init(...) first")
        self.store, self.worker, self.config = store, worker, config
        self.worker_factory = worker_factory
        self.ray_namespace = ray_namespace or ray.get_runtime_context().namespace
        self.detached = detached
        self.timeout_s = timeout_s
        self.serve_worker = serve_worker
        self.hosts = hosts or HostSpec()
        self.pool = pool_id(store, worker, config, self.hosts, serve_worker)
        self._handles: dict[int, Any] = {}

    def host_of(self, session: SessionId) -> int:
        """The index of the session's host."""
        from services.session_host import host_index

        return host_index(session, self.hosts.hosts)

    def handle(self, session: SessionId) -> Any:
        """The handle of the session's host (get-or-create)."""
        return self.handle_at(self.host_of(session))

    def handle_at(self, index: int) -> Any:
        """The handle of host ``index`` (get-or-create)."""
        from services.session_host import host_handle

        found = self._handles.get(index)
        if found is None:
            found = host_handle(
                index,
                pool=self.pool,
                ray_namespace=self.ray_namespace,
                store=self.store,
                worker=self.worker,
                config=self.config,
                host=self.hosts,
                worker_factory=self.worker_factory,
                detached=self.detached,
                serve_worker=self.serve_worker,
            )
            self._handles[index] = found
        return found

    def submit(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        """The ObjectRef of one call."""
        from services.session_host import READ_METHODS

        host = self.handle(session)
        sid = session.model_dump(mode="json")
        if method in READ_METHODS:
            return host.read.remote(sid, method)
        if method == "delete":
            return host.delete.remote(sid)
        if method not in ("step", "reset"):
            raise ValueError(f"unknown session method {method!r}")
        return getattr(host, method).remote(sid, payload)

    def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        import ray

        return ray.get(self.submit(session, method, payload), timeout=self.timeout_s)


class AsyncRayTransport:
    """``RayTransport`` for asyncio callers: awaits the ObjectRefs instead of blocking.

    Steps go through one ``StepBatcher`` per host: the steps of concurrent callers (16 robots'
    streams in one ingress) reach their host as one ``step_many`` call, one model forward."""

    def __init__(self, sync: RayTransport, step_linger_s: float = 0.0) -> None:
        self.sync = sync
        self.step_linger_s = step_linger_s  # see ``StepBatcher``
        self._batchers: dict[int, StepBatcher] = {}

    async def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        if method != "step":
            return await self.sync.submit(session, method, payload)
        index = self.sync.host_of(session)
        batcher = self._batchers.get(index)
        if batcher is None:
            send = functools.partial(self._steps, index)
            batcher = self._batchers[index] = StepBatcher(send, linger_s=self.step_linger_s)
        return await batcher.submit((session.model_dump(mode="json"), payload))

    async def _steps(self, index: int, items: list[Any]) -> list[Any]:
        results: list[Any] = await self.sync.handle_at(index).step_many.remote(items)
        return results


#: method -> (HTTP verb, path suffix) of the session routes of ``services.http_app``.
_HTTP_ROUTES: dict[str, tuple[str, str]] = {
    "step": ("POST", "step"),
    "reset": ("POST", "reset"),
    "elapsed": ("GET", "elapsed"),
    "summary": ("GET", "summary"),
    "metrics": ("GET", "metrics"),
    "flush": ("POST", "flush"),
    "delete": ("DELETE", ""),
}


class TempomemHTTPError(RuntimeError):
    """An HTTP answer that is not a client error of the request itself (e.g. 503)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def http_result(status: int, body: Any) -> Any:
    """``body`` for a 2xx ``status``; else the Python error the status maps to."""
    if 200 <= status < 300:
        return body
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if status in (401, 403):
        raise PermissionError(f"HTTP {status}: {detail}")
    for error, code in ERROR_STATUS:
        if status == code:
            raise error(f"HTTP {status}: {detail}")
    if status in (400, 413):
        raise ValueError(f"HTTP {status}: {detail}")
    raise TempomemHTTPError(status, detail)


def _http_request(session: SessionId, method: str) -> tuple[str, str]:
    if method not in _HTTP_ROUTES:
        raise ValueError(f"method must be one of {sorted(_HTTP_ROUTES)}, got {method!r}")
    if session.kind != "robot":
        raise ValueError(f"HTTP session routes serve robot sessions, not {session.kind!r}")
    verb, suffix = _HTTP_ROUTES[method]
    return verb, f"/v1/sessions/{session.id}" + (f"/{suffix}" if suffix else "")


def _body(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class HttpTransport:
    """Sessions of a ``tempomem serve`` over HTTP (sync; one pooled httpx client).

    Args:
        url: base URL of the server, e.g. ``http://127.0.0.1:8000``.
        token: bearer token (when the server has tokens).
        timeout_s: longest wait for one request.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 120.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.token, self.timeout_s = token, timeout_s  # for streams (a secret: never shown)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        verb, path = _http_request(session, method)
        response = self._http.request(
            verb, path, json=payload, headers={NAMESPACE_HEADER: session.namespace}
        )
        return http_result(response.status_code, _body(response))

    def get(self, path: str) -> Any:
        """GET a non-session route (``/healthz``, ``/metrics``): JSON or text."""
        response = self._http.get(path)
        return http_result(response.status_code, _body(response))

    def close(self) -> None:
        self._http.close()


class AsyncHttpTransport:
    """``HttpTransport`` for asyncio callers (httpx.AsyncClient)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 120.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.token, self.timeout_s = token, timeout_s  # for streams (a secret: never shown)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)

    async def call(self, session: SessionId, method: str, payload: dict[str, Any] | None) -> Any:
        verb, path = _http_request(session, method)
        response = await self._http.request(
            verb, path, json=payload, headers={NAMESPACE_HEADER: session.namespace}
        )
        return http_result(response.status_code, _body(response))

    async def aclose(self) -> None:
        await self._http.aclose()


#: How each session method's JSON answer becomes the client's return value.
_ANSWERS: dict[str, Callable[[Any], Any]] = {
    "step": StepResponse.model_validate,
    "reset": ResetResponse.model_validate,
    "elapsed": ElapsedResponse.model_validate,
    "summary": SessionSummary.model_validate,
    "metrics": dict,
    "flush": bool,
    "delete": bool,
}


class StepOptions(TypedDict, total=False):
    """A step's optional arguments (see ``StepRequest``): ``t`` (seconds; default: the
    session's clock), ``choices`` (candidate actions as token lists) and ``top_k``."""

    t: float | None
    choices: Sequence[Sequence[int]] | None
    top_k: int


def step_payload(
    step_id: int, input_ids: Sequence[int], prefix_len: int, **options: Unpack[StepOptions]
) -> dict[str, Any]:
    """A step request, validated here (the error names the field), as JSON-ready data."""
    choices = options.get("choices")
    request = StepRequest(
        step_id=step_id,
        input_ids=list(input_ids),
        prefix_len=prefix_len,
        t=options.get("t"),
        choices=None if choices is None else [list(c) for c in choices],
        top_k=options.get("top_k", StepRequest.model_fields["top_k"].default),
    )
    return request.model_dump(mode="json")


TransportT = TypeVar("TransportT")


class _ClientBase(Generic[TransportT]):
    """What the sync and async clients share: the tenant, the constructor and ``connect``,
    request building, answer parsing. Each client adds only how a call is made (``_call``:
    blocking, or awaited) and which transports it speaks through (``HTTP_TRANSPORT``,
    ``_from_ray``)."""

    HTTP_TRANSPORT: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        namespace: str,
        *,
        kind: SessionKind = "robot",
        store: StoreSpec | str = "local",
        worker: WorkerSpec | None = None,
        config: SessionConfig | None = None,
        worker_factory: ModelFactory | None = None,
        ray_namespace: str | None = None,
        detached: bool = False,
        timeout_s: float = 120.0,
        transport: TransportT | None = None,
        hosts: HostSpec | None = None,
    ) -> None:
        # Validates the namespace and kind once, naming the field on error.
        SessionId(kind=kind, namespace=namespace, id="probe")
        self.namespace = namespace
        self.kind = kind
        if transport is None:
            from services.policy_worker import WorkerSpec
            from services.session import StoreSpec

            ray = RayTransport(
                hosts=hosts,
                store=store if isinstance(store, StoreSpec) else StoreSpec(url=store),
                worker=worker or WorkerSpec(),
                config=config,
                worker_factory=worker_factory,
                ray_namespace=ray_namespace,
                detached=detached,
                timeout_s=timeout_s,
            )
            transport = self._from_ray(ray)
        self.transport: TransportT = transport

    def _from_ray(self, transport: RayTransport) -> TransportT:
        raise NotImplementedError

    @classmethod
    def connect(
        cls,
        url: str = "http://127.0.0.1:8000",
        *,
        namespace: str = "default",
        token: str | None = None,
        timeout_s: float = 120.0,
    ) -> Self:
        """A client of a ``tempomem serve`` at ``url`` (HTTP transport); ``namespace`` must be
        the token's namespace when the server has tokens."""
        transport = cls.HTTP_TRANSPORT(url, token=token, timeout_s=timeout_s)
        return cls(namespace, transport=transport)

    def session_id(self, session: str | SessionId) -> SessionId:
        """A session of this client's tenant; ``PermissionError`` for another tenant's."""
        if isinstance(session, SessionId):
            if session.namespace != self.namespace:
                raise PermissionError(
                    f"session {session} belongs to namespace {session.namespace!r}; this client "
                    f"is bound to namespace {self.namespace!r}"
                )
            return session
        return SessionId(kind=self.kind, namespace=self.namespace, id=session)

    def _stream_core(
        self, transport: object, session_id: str | SessionId, direct: bool
    ) -> StreamCore:
        """What a stream of ``session_id`` needs from an HTTP transport (else ``TypeError``)."""
        from services.stream_client import StreamCore

        if not isinstance(transport, HttpTransport | AsyncHttpTransport):
            raise TypeError(
                "stream() speaks to a `tempomem serve` over WebSocket: make the client with "
                "TempomemClient.connect(url, ...) (or AsyncTempomemClient.connect)"
            )
        session = self.session_id(session_id)
        return StreamCore(transport.url, session, transport.token, transport.timeout_s, direct)

    @staticmethod
    def _reset_request(reason: str | None) -> dict[str, Any]:
        return ResetRequest(reason=reason).model_dump(mode="json")


class TempomemClient(_ClientBase[Transport]):
    """Synchronous client of one tenant's sessions.

    Args:
        namespace: the tenant; [A-Za-z0-9_.-]{1,64} starting with a letter or digit.
        kind: kind of the sessions addressed by plain string ids ("robot" or "agent").
        store: ``StoreSpec`` or its URL ("local" or "redis://..."): where sessions persist.
        worker: ``WorkerSpec`` of the shared policy worker (default: tiny-llama).
        config: ``SessionConfig`` for sessions this client creates.
        worker_factory: model factory for the worker (instead of ``worker.model``).
        transport: another transport (e.g. ``HttpTransport``); the Ray options are then unused.
        hosts: the session host pool (``HostSpec``; default 2 hosts); the same in every
            client of a Ray namespace.
    """

    HTTP_TRANSPORT = HttpTransport

    def _from_ray(self, transport: RayTransport) -> Transport:
        return transport

    def _call(self, method: str, session_id: str | SessionId, payload: Any = None) -> Any:
        answer = self.transport.call(self.session_id(session_id), method, payload)
        return _ANSWERS[method](answer)

    def step(
        self,
        session_id: str | SessionId,
        step_id: int,
        input_ids: Sequence[int],
        prefix_len: int,
        **options: Unpack[StepOptions],
    ) -> StepResponse:
        """One control step; see ``StepRequest`` and ``StepResponse``."""
        payload = step_payload(step_id, input_ids, prefix_len, **options)
        return cast(StepResponse, self._call("step", session_id, payload))

    def reset(self, session_id: str | SessionId, reason: str | None = None) -> ResetResponse:
        """Start a new episode (empty memory; step ids from 0)."""
        return cast(ResetResponse, self._call("reset", session_id, self._reset_request(reason)))

    def elapsed(self, session_id: str | SessionId) -> ElapsedResponse:
        """Seconds since the session's last step and since its episode began."""
        return cast(ElapsedResponse, self._call("elapsed", session_id))

    def summary(self, session_id: str | SessionId) -> SessionSummary:
        return cast(SessionSummary, self._call("summary", session_id))

    def metrics(self, session_id: str | SessionId) -> dict[str, int]:
        return cast(dict[str, int], self._call("metrics", session_id))

    def flush(self, session_id: str | SessionId) -> bool:
        """Wait until every answered step of the session is committed to the store."""
        return cast(bool, self._call("flush", session_id))

    def delete(self, session_id: str | SessionId) -> bool:
        """End the session: its memory, its store record and its actor (``SessionNotFound``
        if it does not exist). True if a store record was deleted."""
        return cast(bool, self._call("delete", session_id))

    def stream(self, session_id: str | SessionId, direct: bool = True) -> StepStream:
        """The session's steps over one WebSocket (a client made with ``connect``): a
        ``StepStream`` whose ``step(...)`` takes this ``step``'s arguments but the session.
        ``with client.stream("robot-1") as s: s.step(0, ids, prefix_len)``. ``direct``: move
        to the session host's own stream when the server offers one (``services.host_stream``;
        ``s.direct`` says whether it did)."""
        from services.stream_client import StepStream

        return StepStream(self._stream_core(self.transport, session_id, direct))


class AsyncTempomemClient(_ClientBase[AsyncTransport]):
    """``TempomemClient`` for asyncio code: the same methods, awaited. Same arguments."""

    HTTP_TRANSPORT = AsyncHttpTransport

    def _from_ray(self, transport: RayTransport) -> AsyncTransport:
        return AsyncRayTransport(transport)

    async def _call(self, method: str, session_id: str | SessionId, payload: Any = None) -> Any:
        answer = await self.transport.call(self.session_id(session_id), method, payload)
        return _ANSWERS[method](answer)

    @async_twin_of(TempomemClient.step)
    async def step(self, session_id: str | SessionId, *args: Any, **options: Any) -> StepResponse:
        payload = step_payload(*args, **options)
        return cast(StepResponse, await self._call("step", session_id, payload))

    async def reset(self, session_id: str | SessionId, reason: str | None = None) -> ResetResponse:
        payload = self._reset_request(reason)
        return cast(ResetResponse, await self._call("reset", session_id, payload))

    async def elapsed(self, session_id: str | SessionId) -> ElapsedResponse:
        return cast(ElapsedResponse, await self._call("elapsed", session_id))

    async def summary(self, session_id: str | SessionId) -> SessionSummary:
        return cast(SessionSummary, await self._call("summary", session_id))

    async def metrics(self, session_id: str | SessionId) -> dict[str, int]:
        return cast(dict[str, int], await self._call("metrics", session_id))

    async def flush(self, session_id: str | SessionId) -> bool:
        return cast(bool, await self._call("flush", session_id))

    async def delete(self, session_id: str | SessionId) -> bool:
        return cast(bool, await self._call("delete", session_id))

    async def stream(self, session_id: str | SessionId, direct: bool = True) -> AsyncStepStream:
        """``TempomemClient.stream`` for asyncio, connected when awaited:
        ``async with await client.stream("robot-1") as s: await s.step(0, ids, prefix_len)``."""
        from services.stream_client import AsyncStepStream

        return await AsyncStepStream.open(self._stream_core(self.transport, session_id, direct))
