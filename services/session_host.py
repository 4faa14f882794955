"""``SessionHost``: one Ray actor holds many sessions' memory (a bounded pool of them).

A session used to be an actor of its own, a ~330 MB process (it imports torch), so any token
holder could exhaust a host by naming new sessions. Now ``hosts`` named actors
(``tempomem/host/{pool}/{i}``, restartable with ``max_restarts=-1``) share the sessions: a session
goes to the host that rendezvous hashing picks (``host_index``: stable across restarts and the
same in every process), and a host keeps ``services.session.SessionActor`` objects, one per
session, with one policy backend (with ``placement="session"``, one model copy) and one store
connection pool for all of them.

Lifetimes. Only ``step`` and ``reset`` create a session (``SessionLimitReached`` past the
tenant's cap, counted as session records in the tenant's store); reads and ``delete`` of a
session that is neither held nor stored raise ``SessionNotFound``. A session idle for
``idle_evict_s`` is written to the store and dropped from memory (by a timer thread, never on
another session's call path); it is restored on its next use. A restarted host holds nothing
and restores each session from the store on its first use, so the guarantees of
``SessionActor`` hold as before: every committed step survives, and step ids replay.

Placement over nodes (``HostSpec.node_placement``). On a multi-node cluster Ray's default
scheduler keeps zero-CPU actors near their creator, and its ``SPREAD`` strategy is best effort
(3 hosts on a 3-node cluster: 2 landed on one node). With ``"spread"`` (the default) host ``i``
asks, softly, for the ``i mod n``-th of the ``n`` alive nodes that declare CPUs (sorted by node
id), so ``n`` hosts cover ``n`` nodes and losing a node takes only its hosts' sessions away
for the moment: Ray restarts those hosts on a surviving node (the affinity is soft), and they
restore their sessions from the store. On one node both settings are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kv_store import StoreUnavailable
from kv_store.base import BaseStore
from services.host_stream import DirectStreamSpec, HostStreamServer
from services.policy_backends import PolicyBackend
from services.policy_worker import ModelFactory, WorkerSpec
from services.schemas import SessionId, SessionLimitReached, SessionNotFound, StepRequest
from services.session import (
    ServeWorker,
    SessionActor,
    SessionConfig,
    StepPlan,
    StoreSpec,
    TenantStores,
    build_policy,
)

log = logging.getLogger(__name__)

#: One step of ``step_many``: its place in the call, its session, its request.
_Item = tuple[int, SessionId, StepRequest | Mapping[str, Any]]

#: Methods that only read a session (they never create one).
READ_METHODS = frozenset({"elapsed", "summary", "metrics", "flush"})


class HostSpec(BaseModel):
    """The pool of session hosts. Every process of a deployment must use the same ``hosts``:
    it decides which host holds a session."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hosts: int = Field(default=2, ge=1, le=1024, description="Session host actors.")
    idle_evict_s: float | None = Field(
        default=600.0,
        gt=0,
        description="A session unused this long is written to the store and dropped from "
        "memory (restored on its next use). None: never.",
    )
    max_sessions_per_namespace: int | None = Field(
        default=None, ge=1, description="Most sessions (records in the store) per tenant."
    )
    max_concurrency: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Concurrent calls per host with a shared policy (1 with placement "
        "'session': one model copy steps one session at a time).",
    )
    node_placement: Literal["spread", "default"] = Field(
        default="spread",
        description="'spread': host i prefers the (i mod n)-th alive node with CPUs (a soft "
        "node affinity: elsewhere if that node is gone or full). 'default': Ray's scheduler.",
    )
    direct_stream: DirectStreamSpec | None = Field(
        default=None,
        description="Hosts take robots' streams themselves (services.host_stream); None: "
        "streams go through the HTTP proxy and the ingress.",
    )


def host_index(session: SessionId, hosts: int) -> int:
    """The host of ``session`` among ``hosts``: rendezvous (highest random weight) hashing,
    so growing the pool moves only the sessions the new host wins."""

    def weight(index: int) -> int:
        digest = hashlib.blake2b(f"{index}|{session}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return max(range(hosts), key=weight)


def pool_id(*specs: BaseModel | None) -> str:
    """A short digest of the settings a pool's hosts are created with: clients with the same
    store, worker, session and host settings share hosts; different settings never do (a host
    created by one would otherwise serve the other with the wrong store or model)."""
    text = json.dumps(
        [None if s is None else s.model_dump(mode="json") for s in specs], sort_keys=True
    )
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def host_name(pool: str, index: int) -> str:
    return f"tempomem/host/{pool}/{index}"


class SessionHost:
    """Many sessions of a deployment (use as a Ray actor; see ``host_handle``).

    Args mirror ``SessionActor``'s (shared by every session here) plus ``HostSpec``.
    """

    def __init__(
        self,
        index: int,
        store: StoreSpec | Mapping[str, Any] | None = None,
        worker: WorkerSpec | Mapping[str, Any] | None = None,
        config: SessionConfig | Mapping[str, Any] | None = None,
        host: HostSpec | Mapping[str, Any] | None = None,
        ray_namespace: str = "tempomem",
        worker_factory: ModelFactory | None = None,
        serve_worker: ServeWorker | Mapping[str, Any] | None = None,
    ) -> None:
        self.index = index
        self.store_spec = StoreSpec.model_validate(store or {})
        self.worker_spec = WorkerSpec.model_validate(worker or {})
        self.config = SessionConfig.model_validate(config or {})
        self.spec = HostSpec.model_validate(host or {})
        self.ray_namespace = ray_namespace
        self.serve_worker = (
            None if serve_worker is None else ServeWorker.model_validate(serve_worker)
        )
        self._policy: PolicyBackend = build_policy(
            self.worker_spec, ray_namespace, worker_factory, self.serve_worker
        )
        self._stores = TenantStores(self.store_spec)
        self._sessions: OrderedDict[str, SessionActor] = OrderedDict()  # least recent first
        self._last_used: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the maps above, never held during a call
        self._evictions = 0
        self._step_calls = 0  # step_many calls and the steps they carried (stats)
        self._batched_steps = 0
        self._streams: HostStreamServer | None = None
        if self.spec.idle_evict_s is not None:
            janitor = threading.Thread(target=self._evict_forever, name="tempomem-evict")
            janitor.daemon = True
            janitor.start()

    # ---------------------------------------------------------------------------- calls

    def step(self, session: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        return self._run(session, "step", request)

    def step_many(
        self,
        items: Sequence[tuple[SessionId | Mapping[str, Any], StepRequest | Mapping[str, Any]]],
    ) -> list[dict[str, Any] | Exception]:
        """Several sessions' steps, ``(session, request)`` each, in one call: each session's
        checks, then ONE policy forward for all of them where shapes agree (the policy's
        ``step_many``), then each session's answer and store hand-off. The answers equal those
        of ``step`` one by one (up to float rounding of the batched forward); a failing item
        yields its exception in its place. A session named twice runs its steps in order."""
        with self._lock:
            self._step_calls += 1
            self._batched_steps += len(items)
        results: list[dict[str, Any] | Exception | None] = [None] * len(items)
        parsed: list[_Item] = []
        for i, (session, request) in enumerate(items):
            try:
                parsed.append((i, SessionId.model_validate(session), request))
            except ValidationError as err:
                results[i] = portable_error(err)
        for batch in _rounds(parsed):
            self._step_round(batch, results)
        return cast(list[dict[str, Any] | Exception], results)  # every item has its result

    def reset(self, session: Mapping[str, Any], request: Mapping[str, Any] | None) -> Any:
        return self._run(session, "reset", request)

    def open_stream(self, session: Mapping[str, Any]) -> dict[str, str] | None:
        """A direct stream to this host for a robot ``session``: ``{"url", "ticket"}``
        (``services.host_stream``), or None when the spec has no ``direct_stream``. The caller
        has checked the tenant: the ticket is the right to step this session."""
        if self.spec.direct_stream is None:
            return None
        sid = SessionId.model_validate(session)
        with self._lock:
            if self._streams is None:
                self._streams = HostStreamServer(self.step_many, self.spec.direct_stream)
            streams = self._streams
        return streams.ticket(sid)

    def read(self, session: Mapping[str, Any], method: str) -> Any:
        if method not in READ_METHODS:
            raise ValueError(f"method must be one of {sorted(READ_METHODS)}, got {method!r}")
        return self._run(session, method, None)

    def delete(self, session: Mapping[str, Any]) -> bool:
        """End a session: its record, its memory here (``SessionNotFound`` if unknown)."""
        sid = SessionId.model_validate(session)
        with self._session_lock(sid):
            actor = self._held(sid) or self._restorable(sid)
            deleted = actor.forget()
            with self._lock:
                self._drop(str(sid))
            return deleted

    def stats(self) -> dict[str, Any]:
        """Sessions held, evictions so far, ``step_many`` calls and the steps they carried,
        direct streams (``stream_open``, ``stream_connections``, ``stream_refused``,
        ``stream_steps``; once the first was asked for), this
        process's id and its Ray node's id (None outside Ray), for benchmarks and tests."""
        import os

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        streams = {} if self._streams is None else self._streams.stats()
        with self._lock:
            return {
                **{f"stream_{name}": count for name, count in streams.items()},
                "sessions": len(self._sessions),
                "evictions": self._evictions,
                "step_many_calls": self._step_calls,
                "step_many_steps": self._batched_steps,
                "pid": os.getpid(),
                "node_id": node,
            }

    def evict_idle(self, older_than_s: float | None = None) -> int:
        """Write and drop the sessions unused for ``older_than_s`` (default: the spec's)."""
        limit = self.spec.idle_evict_s if older_than_s is None else older_than_s
        if limit is None:
            return 0
        now = time.monotonic()
        idle = []
        with self._lock:
            for key in self._sessions:  # least recently used first: stop at the first in use
                if now - self._last_used[key] < limit:
                    break
                idle.append(key)
        evicted = 0
        for key in idle:
            lock = self._locks.get(key)
            if lock is None or not lock.acquire(blocking=False):
                continue  # in use right now: not idle after all
            try:
                with self._lock:
                    actor = self._sessions.get(key)
                if actor is None:
                    continue
                actor.close(timeout_s=max(1.0, 4 * self.store_spec.socket_timeout_s))
                with self._lock:
                    self._drop(key)
                    self._evictions += 1
                evicted += 1
            finally:
                lock.release()
        return evicted

    # ---------------------------------------------------------------------------- internals

    def _evict_forever(self) -> None:
        assert self.spec.idle_evict_s is not None
        period = min(60.0, max(0.05, self.spec.idle_evict_s / 4))
        while True:
            time.sleep(period)
            try:
                self.evict_idle()
            except Exception:  # a store error must not end the janitor
                log.exception("idle eviction failed")

    def _step_round(
        self,
        batch: list[_Item],
        results: list[dict[str, Any] | Exception | None],
    ) -> None:
        """``step_many`` for sessions that are all different; writes ``results[i]``."""
        with contextlib.ExitStack() as held:
            for _, sid, _ in sorted(batch, key=lambda item: str(item[1])):  # one lock order
                held.enter_context(self._session_lock(sid))
            planned: list[tuple[int, SessionActor, StepPlan]] = []
            for i, sid, request in batch:
                try:
                    actor = self._actor(sid, "step")
                    plan = actor.begin_step(request)
                except Exception as err:
                    results[i] = portable_error(err)
                    continue
                if isinstance(plan, StepPlan):
                    planned.append((i, actor, plan))
                else:
                    results[i] = plan  # a replayed step id: answered already
            if not planned:
                return
            before = time.perf_counter()
            runs = [(plan.memory, plan.request) for _, _, plan in planned]
            try:
                outputs = self._policy.step_many(runs, self.config.worker_timeout_s)
            except Exception as err:
                outputs = [err] * len(planned)
            worker_ms = (time.perf_counter() - before) * 1e3
            for (i, actor, plan), outcome in zip(planned, outputs, strict=True):
                try:
                    if isinstance(outcome, Exception):
                        raise outcome
                    results[i] = actor.finish_step(plan, *outcome, worker_ms)
                except Exception as err:
                    results[i] = portable_error(err)

    def _run(self, session: Mapping[str, Any], method: str, payload: Any) -> Any:
        sid = SessionId.model_validate(session)
        with self._session_lock(sid):
            actor = self._actor(sid, method)
            call: Callable[..., Any] = getattr(actor, method)
            return call() if payload is None and method in READ_METHODS else call(payload)

    def _actor(self, sid: SessionId, method: str) -> SessionActor:
        """The session's actor for ``method`` (its lock held): the one in memory, else a
        restored one for a read (``SessionNotFound`` if there is none), else a new one."""
        actor = self._held(sid)
        if actor is None:
            actor = self._restorable(sid) if method in READ_METHODS else self._open(sid)
        return actor

    def _session_lock(self, sid: SessionId) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(str(sid), threading.Lock())

    def _held(self, sid: SessionId) -> SessionActor | None:
        key = str(sid)
        with self._lock:
            actor = self._sessions.get(key)
            if actor is not None:
                self._sessions.move_to_end(key)
                self._last_used[key] = time.monotonic()
            return actor

    def _restorable(self, sid: SessionId) -> SessionActor:
        """A session that is not held but has a record: restored. Else ``SessionNotFound``."""
        try:
            known = self._stores.get(sid.namespace).exists(sid.store_key)
        except StoreUnavailable as err:  # cannot tell whether it exists: answered as 503
            raise ConnectionError(f"session {sid} is not in memory and {err}") from err
        if not known:
            raise SessionNotFound(f"session {sid} does not exist")
        return self._open(sid, check_cap=False)

    def _open(self, sid: SessionId, check_cap: bool = True) -> SessionActor:
        store = self._stores.get(sid.namespace)
        capped = check_cap and self.spec.max_sessions_per_namespace is not None
        try:
            new = capped and not store.exists(sid.store_key)
        except StoreUnavailable:
            # The cap is counted in the store: with the store down the session starts
            # degraded (memoryless) rather than not at all; it is counted once the store is back.
            log.warning("%s: store unavailable, the tenant's cap is not checked", sid)
            new = False
        actor = SessionActor(
            sid,
            store=self.store_spec,
            worker=self.worker_spec,
            config=self.config,
            ray_namespace=self.ray_namespace,
            policy=self._policy,
            tenant_store=store,
        )
        if new:
            self._admit(sid, store, actor)
        with self._lock:
            self._sessions[str(sid)] = actor
            self._last_used[str(sid)] = time.monotonic()
        return actor

    def _admit(self, sid: SessionId, store: BaseStore, actor: SessionActor) -> None:
        """Admit a new session under the tenant's cap, or forget it and raise
        ``SessionLimitReached``. Write, then count: the session's first record is written
        before the tenant's records are counted, so of sessions racing for the last place (on
        any hosts) none is admitted unseen by the others. Racers may all be refused; a retry
        gets the place. A store too slow for the first write skips the check, as a down one."""
        cap = self.spec.max_sessions_per_namespace
        assert cap is not None  # _open admits only under a cap
        if not actor.write_record(self.store_spec.socket_timeout_s):
            log.warning("%s: first record not written in time, the cap is not checked", sid)
            return
        try:
            live = len(store.keys(prefix=f"session/{sid.kind}/"))
        except StoreUnavailable:
            log.warning("%s: store unavailable, the tenant's cap is not checked", sid)
            return
        if live > cap:
            actor.forget()
            raise SessionLimitReached(
                f"namespace {sid.namespace!r} has {live - 1} other {sid.kind} sessions, its cap "
                f"is {cap}: delete one (DELETE /v1/sessions/{{id}}) before starting another"
            )

    def _drop(self, key: str) -> None:
        self._sessions.pop(key, None)
        self._last_used.pop(key, None)
        self._locks.pop(key, None)


def _rounds(
    items: list[_Item],
) -> list[list[_Item]]:
    """``items`` split in rounds in which every session appears once (in order), so that a
    session's second step sees its first one's memory."""
    rounds: list[list[_Item]] = []
    seen: dict[str, int] = {}  # session -> rounds it is in so far
    for item in items:
        key = str(item[1])
        index = seen.get(key, 0)
        seen[key] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
    return rounds


def portable_error(err: Exception) -> Exception:
    """``err`` as it can travel back in a list of results: a pydantic ``ValidationError``
    (which does not survive Ray's serialisation) becomes a ``ValueError`` with its text."""
    if isinstance(err, ValidationError):
        return ValueError(str(err))
    return err


#: CPUs a spread host reserves. Not 0: Ray 2.60 ignores a soft node affinity for an actor that
#: requests no resources at all (measured: 5 of 9 such hosts landed on their node, 9 of 9 with
#: any CPU request). 1,024 hosts reserve about one CPU.
SPREAD_HOST_CPUS = 0.001


def node_scheduling(spec: HostSpec, index: int) -> dict[str, Any]:
    """Ray actor options that place host ``index`` (see "Placement over nodes" above): a soft
    node affinity (and a token CPU request, which Ray needs to honour it) under ``"spread"`` on
    a cluster of several nodes with CPUs; else nothing."""
    if spec.node_placement != "spread":
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(
        node["NodeID"]
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0
    )
    if len(nodes) < 2:
        return {}
    strategy = NodeAffinitySchedulingStrategy(node_id=nodes[index % len(nodes)], soft=True)
    return {"scheduling_strategy": strategy, "num_cpus": SPREAD_HOST_CPUS}


def host_handle(
    index: int,
    *,
    pool: str,
    ray_namespace: str,
    store: StoreSpec,
    worker: WorkerSpec,
    config: SessionConfig | None = None,
    host: HostSpec | None = None,
    worker_factory: ModelFactory | None = None,
    detached: bool = False,
    max_task_retries: int = 3,
    serve_worker: ServeWorker | None = None,
) -> Any:
    """Session host ``index``'s named actor, created on first use (``get_if_exists=True``).

    ``max_task_retries`` applies to ``step`` and the reads (idempotent per step id, so a step
    that was running when the host died is safely re-run after the restart); ``reset`` and
    ``delete`` are never retried. ``detached=True`` lets hosts outlive their creator.
    """
    spec = host or HostSpec()
    concurrency = 1 if worker.placement == "session" else spec.max_concurrency
    actor_cls: Callable[..., Any] = ray.remote(_RaySessionHost)
    options: dict[str, Any] = {
        "name": host_name(pool, index),
        "namespace": ray_namespace,
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": max_task_retries,
        "max_concurrency": concurrency,
        "num_cpus": 0,
        **node_scheduling(spec, index),
    }
    if detached:
        options["lifetime"] = "detached"
    return actor_cls.options(**options).remote(  # type: ignore[attr-defined]
        index,
        store.model_dump(mode="json"),
        worker.model_dump(mode="json"),
        (config or SessionConfig()).model_dump(mode="json"),
        spec.model_dump(mode="json"),
        ray_namespace,
        worker_factory,
        None if serve_worker is None else serve_worker.model_dump(mode="json"),
    )


def _ray_method(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return cast(Callable[[Callable[..., Any]], Callable[..., Any]], ray.method(**options))


class _RaySessionHost(SessionHost):
    """``SessionHost`` with Ray per-method options: ``reset``/``delete`` are not retried."""

    @_ray_method(max_task_retries=0)
    def reset(self, session: Mapping[str, Any], request: Mapping[str, Any] | None) -> Any:
        return super().reset(session, request)

    @_ray_method(max_task_retries=0)
    def delete(self, session: Mapping[str, Any]) -> bool:
        return super().delete(session)
