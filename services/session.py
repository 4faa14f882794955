"""``SessionActor``: the memory of one robot or agent session.

Placement and lifetime. ``services.session_host.SessionHost`` actors hold many sessions each
(a bounded pool); a host creates a ``SessionActor`` for a session on its first use, and that
``__init__`` restores the session from the store: key ``session/{kind}/{id}`` in a store whose
namespace is the tenant namespace. A restarted or evicted session restores the same way.

Steps. Step ids strictly increase within an episode. ``step(request)`` with a ``step_id`` that
was answered and is still in the replay window returns the stored response with
``replayed=True`` and changes nothing (a retried step is never applied twice) — if its body is
the same; a retry with another body is a ``StepConflict`` (HTTP 409), and so is an id at or
below the last one that was never answered or has left the window. Otherwise the policy runs it
on the session's memory and the actor adopts the new memory. Frame times ``t`` must not go
backwards within an episode (a ``ValueError`` that says how to reset). Step ids and times
restart after ``reset()`` (a new episode). Where the policy runs is the
``WorkerSpec.placement`` (see ``services.policy_backends``): ``"shared"`` sends the packed memory
to one ``PolicyWorker`` actor (or Serve deployment) that all sessions share, a second actor hop
per step; ``"session"`` runs an engine in this actor's process (one hop, no state transfer, one
model copy per session).

Durability (write-behind with a bounded lag). After each step a full snapshot (memory, last
step id, the last ``replay_window`` responses, episode, times) is handed to a writer thread;
snapshots coalesce, so the store receives the newest one. "Committed" means *written to the
store*; only committed steps survive an actor restart. Bound: when more than ``max_lag_steps``
answered steps, or a step older than ``max_lag_s``, would be uncommitted, ``step`` waits for the
write before answering. So at most ``max_lag_steps`` steps (default 2) are lost if the actor
dies; ``max_lag_steps=0`` is write-through (every answered step is committed, and the response
says ``committed=True``). After a restart the controller re-sends the steps after
``summary().committed_step_id``; they are applied then, as new steps.

Degradation. When the store is unavailable (a write or the restore fails with
``StoreUnavailable``), steps go on *memoryless*: the worker runs them on an empty memory
(present-only), their frames are not remembered, the session's memory stays as last computed
while healthy, and responses carry ``degraded=True``; ``metrics()["degraded_steps"]`` counts
them. No exception reaches the controller because memory is down, and no step waits on a sick
store: the writer (``services.write_behind``) probes it in the background every
``probe_interval_s``, and a step waits for a write at most ``store_budget_s`` (default 50 ms).
A store that answers but falls behind the lag bound also makes steps run memoryless
(``store_slow_steps``) until the writer catches up. When a probe is answered, the next step
restores from the store if ``__init__`` could not, resumes writing, and steps use memory again.

Store backends (``StoreSpec.url``): a ``redis://`` URL for anything that must survive an actor
restart. ``"local"`` is an in-process ``LocalStore``: it lives and dies with the actor's worker
process, so with it a restarted actor comes back EMPTY (no memory, step ids from scratch). Use
it for single-process development only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kv_store import CorruptRecord, LocalStore, RedisStore, StoreUnavailable, store_kind
from kv_store.base import BaseStore
from kv_store.state import join_state
from services.episode import EpisodeRecord
from services.policy_backends import PolicyBackend, policy_backend
from services.policy_worker import ModelFactory, StepOutput, WorkerSpec
from services.schemas import (
    ElapsedResponse,
    ResetRequest,
    ResetResponse,
    SessionId,
    SessionSummary,
    StepConflict,
    StepRequest,
    StepResponse,
    Timing,
)
from services.write_behind import MEMORY_PREFIX, Snapshot, WriteBehind, WriterStatus

log = logging.getLogger(__name__)

RECORD_FORMAT = "tempomem.session/1"


class StoreSpec(BaseModel):
    """Where session records live: ``"local"`` (per process; see the module docstring), a
    ``redis://`` URL, or a ``redis+cluster://`` URL (a Redis Cluster; each session's keys share
    one hash slot). The namespace is not part of the spec: it is always the tenant's."""

    # The URL may hold a password: never in a repr or in a validation error's echo of the input.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str = Field(default="local", pattern=r"^(local|rediss?(\+cluster)?://\S+)$", repr=False)
    socket_timeout_s: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="Redis command timeout: bounds how long a hung store can stall a step.",
    )
    ttl_s: float | None = Field(
        default=None, gt=0, description="Session records expire this long after their last write."
    )

    def build(self, namespace: str) -> BaseStore:
        """A store confined to the tenant ``namespace``."""
        if self.url == "local":
            return LocalStore(namespace=namespace)
        return RedisStore(self.url, namespace=namespace, socket_timeout_s=self.socket_timeout_s)


class TenantStores:
    """The store of each tenant: views (``with_namespace``) of one store, so all tenants share
    one connection pool. Thread-safe; the first tenant asked for builds the pool."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self._root: BaseStore | None = None
        self._views: dict[str, BaseStore] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str) -> BaseStore:
        with self._lock:
            view = self._views.get(namespace)
            if view is None:
                if self._root is None:
                    self._root = self.spec.build(namespace)
                view = self._root.with_namespace(namespace)
                self._views[namespace] = view
            return view


class SessionConfig(BaseModel):
    """Bounds of a session actor's write-behind, replay window and store probing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_lag_steps: int = Field(
        default=2, ge=0, le=1024, description="Most answered steps not yet in the store."
    )
    max_lag_s: float = Field(
        default=1.0, ge=0, le=3600, description="Oldest answered step not yet in the store."
    )
    replay_window: int = Field(
        default=16, ge=1, le=1024, description="Recent responses kept for replayed step ids."
    )
    probe_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=600,
        description="How often the writer re-checks an unavailable store (in the background).",
    )
    store_budget_s: float = Field(
        default=0.05,
        ge=0,
        le=60,
        description="Longest a step or reset waits on the store (a write over the lag bound); "
        "past it the answer says committed=false and, while the writer is behind, steps run "
        "memoryless. Raise it for states that take longer to write (large models).",
    )
    worker_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for the policy worker per step."
    )


class ServeWorker(BaseModel):
    """A Ray Serve deployment that steps sessions instead of the shared ``PolicyWorker`` actor
    (``services.deployment.PolicyDeployment``: replicated, batching concurrent sessions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app: str = Field(min_length=1, max_length=128, description="Serve application name.")
    deployment: str = Field(default="PolicyDeployment", min_length=1, max_length=128)


def build_policy(
    worker: WorkerSpec,
    ray_namespace: str,
    factory: ModelFactory | None,
    serve_worker: ServeWorker | None,
) -> PolicyBackend:
    """The policy backend of a session (or of a host's sessions): see ``policy_backend``."""
    return policy_backend(
        worker,
        ray_namespace=ray_namespace,
        factory=factory,
        serve_deployment=None
        if serve_worker is None
        else (serve_worker.app, serve_worker.deployment),
    )


@dataclass(frozen=True)
class StepPlan:
    """A step that passed a session's checks and waits for the policy (``begin_step``):
    ``memory`` is the session's memory to run it on (None: memoryless, when the store cannot
    take the new state)."""

    request: StepRequest
    digest: str
    healthy: bool
    memory: Any
    started: float


class SessionActor:
    """The memory of one robot or agent session (use as a Ray actor; see ``session_handle``).

    Args:
        session_id: ``SessionId`` (or its dict).
        store: ``StoreSpec`` (or its dict); its namespace is ``session_id.namespace``.
        worker: ``WorkerSpec`` of the policy (or its dict); its ``placement`` says whether
            steps go to the shared ``PolicyWorker`` actor or run in this actor's process.
        config: ``SessionConfig`` (or its dict).
        ray_namespace: Ray namespace of the named worker actor.
        worker_factory: optional model factory for the worker (see ``PolicyWorker``); with
            ``placement="session"`` it may also return a ready ``StepRunner``.
        serve_worker: ``ServeWorker`` (or its dict): step through that Serve deployment
            instead of the shared ``PolicyWorker`` actor (ignored with ``placement="session"``).
        policy: a policy backend to share (a ``SessionHost`` gives all its sessions one);
            None: built from ``worker``.
        tenant_store: the tenant's store to share (one connection pool per host); None: built
            from ``store``.
    """

    def __init__(
        self,
        session_id: SessionId | Mapping[str, Any],
        store: StoreSpec | Mapping[str, Any] | None = None,
        worker: WorkerSpec | Mapping[str, Any] | None = None,
        config: SessionConfig | Mapping[str, Any] | None = None,
        ray_namespace: str = "tempomem",
        worker_factory: ModelFactory | None = None,
        serve_worker: ServeWorker | Mapping[str, Any] | None = None,
        *,
        policy: PolicyBackend | None = None,
        tenant_store: BaseStore | None = None,
    ) -> None:
        self.session_id = SessionId.model_validate(session_id)
        self.store_spec = StoreSpec.model_validate(store or {})
        self.worker_spec = WorkerSpec.model_validate(worker or {})
        self.config = SessionConfig.model_validate(config or {})
        self.serve_worker = (
            None if serve_worker is None else ServeWorker.model_validate(serve_worker)
        )
        self._policy: PolicyBackend = policy or build_policy(
            self.worker_spec, ray_namespace, worker_factory, self.serve_worker
        )
        self._store = tenant_store or self.store_spec.build(self.session_id.namespace)
        self._key = self.session_id.store_key
        self._writer = WriteBehind(
            self._store,
            self._key,
            self.store_spec.ttl_s,
            self._policy.to_state,
            probe_interval_s=self.config.probe_interval_s,
        )

        self._memory: Any = None  # the policy backend's form of the session's memory
        self.episode = EpisodeRecord()
        self._version = 0
        self._reset_since_start = False
        self.restored = False
        self._metrics: dict[str, int] = {
            "steps": 0,
            "replayed": 0,
            "degraded_steps": 0,
            "sync_writes": 0,
            "store_unavailable": 0,
            "store_slow_steps": 0,
            "recoveries": 0,
            "restore_errors": 0,
        }
        self._needs_restore = True
        try:
            self._restore()
        except StoreUnavailable as err:
            log.warning("%s: store unavailable at start, running degraded: %s", self._key, err)
            self._metrics["store_unavailable"] += 1
            self._writer.mark_unavailable()
        except (CorruptRecord, ValueError):
            # Failing here would restart the actor forever; start empty, loudly instead. The
            # unreadable record is replaced by the next write.
            log.exception("%s: stored session record is unreadable; starting empty", self._key)
            self._metrics["restore_errors"] += 1
            self._needs_restore = False

    # ---------------------------------------------------------------------------- public API

    def step(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one step (a JSON dict of ``StepResponse``); see the module docstring."""
        plan = self.begin_step(request)
        if isinstance(plan, dict):
            return plan
        before = time.perf_counter()
        output, new_memory = self._policy.step(
            plan.memory, plan.request, self.config.worker_timeout_s
        )
        return self.finish_step(plan, output, new_memory, (time.perf_counter() - before) * 1e3)

    def begin_step(self, request: StepRequest | Mapping[str, Any]) -> dict[str, Any] | StepPlan:
        """The part of ``step`` before the policy runs: the answer itself for a replayed step
        id, else what to run (a ``SessionHost`` runs several sessions' plans in one forward).
        Raises what ``step`` raises for a bad request, before anything changes."""
        start = time.perf_counter()
        req = StepRequest.model_validate(request)
        digest = request_digest(req)
        last = self.episode.last_step_id
        if last is not None and req.step_id <= last:
            return self._replay(req.step_id, digest)
        self._check_time(req.t)
        healthy = self._store_usable()
        return StepPlan(req, digest, healthy, self._memory if healthy else None, start)

    def finish_step(
        self, plan: StepPlan, output: StepOutput, new_memory: Any, worker_ms: float
    ) -> dict[str, Any]:
        """The part of ``step`` after the policy ran ``plan``: keep the new memory, answer,
        hand the state to the store. ``worker_ms``: how long the policy took."""
        req, healthy = plan.request, plan.healthy
        if healthy:
            self._memory = new_memory
            self.episode.frames = output.frames_after
        else:
            self._metrics["degraded_steps"] += 1
        self._metrics["steps"] += 1
        self.episode.applied(req.step_id, req.t, plan.digest)
        committed = False
        store_ms = 0.0
        response = self._response(req.step_id, output, degraded=not healthy)
        if healthy:
            before_store = time.perf_counter()
            committed = self._commit(response, req.step_id)
            store_ms = (time.perf_counter() - before_store) * 1e3
        timing = Timing(
            model_ms=output.model_ms,
            state_ms=output.state_ms,
            worker_ms=worker_ms,
            store_ms=store_ms,
            total_ms=(time.perf_counter() - plan.started) * 1e3,
        )
        response = response.model_copy(update={"timing": timing, "committed": committed})
        self._remember(req.step_id, response)
        return response.model_dump(mode="json")

    def reset(self, request: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start a new episode: empty memory, step ids from 0; written to the store at once."""
        ResetRequest.model_validate(request or {})
        healthy = self._store_usable()
        self._memory = None
        self.episode = self.episode.next_episode()
        self._reset_since_start = True
        # Submitted even when the store is down: the writer holds it until the store is back,
        # so a reset during an outage is never undone by an older pending snapshot.
        self._writer.submit(self._snapshot())
        committed = healthy and self._writer.flush(self.config.store_budget_s)
        response = ResetResponse(
            session_id=str(self.session_id), episode=self.episode.number, degraded=not committed
        )
        return response.model_dump(mode="json")

    def elapsed(self) -> dict[str, Any]:
        """Seconds since the last step and since the episode began (host wall clock)."""
        now = time.time()
        last_wall = self.episode.last_step_wall
        since_step = None if last_wall is None else now - last_wall
        return ElapsedResponse(
            session_id=str(self.session_id),
            since_last_step_s=since_step,
            since_reset_s=now - self.episode.reset_wall,
            last_step_id=self.episode.last_step_id,
        ).model_dump(mode="json")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait for the write-behind; True when every answered step is committed."""
        self._store_usable()
        return self._writer.flush(timeout_s)

    def summary(self) -> dict[str, Any]:
        """What this actor holds now (``SessionSummary`` as a dict)."""
        writer = self._writer.status()
        return SessionSummary(
            session_id=str(self.session_id),
            episode=self.episode.number,
            last_step_id=self.episode.last_step_id,
            committed_step_id=writer.committed_step_id,
            frames_in_memory=self.episode.frames,
            degraded=not writer.available or self._needs_restore,
            pending_writes=self._version - writer.committed_version if writer.pending else 0,
            restored=self.restored,
            store=store_kind(self.store_spec.url),
        ).model_dump(mode="json")

    def write_record(self, timeout_s: float) -> bool:
        """Write the session's record now (its current state), waiting up to ``timeout_s``;
        True once it is in the store. A host writes a new session's first record before it
        counts the tenant's sessions against the cap."""
        self._writer.submit(self._snapshot())
        return self._writer.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Write what is pending (up to ``timeout_s``) and end the writer, keeping the record:
        the session can be restored from the store later (idle eviction). True if nothing
        answered was left unwritten."""
        flushed = self._writer.flush(timeout_s)
        self._writer.stop()
        return flushed

    def forget(self) -> bool:
        """Delete the session's store record and stop writing it (before the actor is killed:
        ``RayTransport.delete``). True if there was a record."""
        self._writer.stop()
        return self._store.delete(self._key)

    def metrics(self) -> dict[str, int]:
        """Counters: steps, replayed, degraded_steps, writes, write_failures, sync_writes,
        store_unavailable, recoveries."""
        writer = self._writer.status()
        return {**self._metrics, "writes": writer.writes, "write_failures": writer.failures}

    # ---------------------------------------------------------------------------- internals

    def _response(self, step_id: int, output: StepOutput, degraded: bool) -> StepResponse:
        return StepResponse(
            step_id=step_id,
            session_id=str(self.session_id),
            degraded=degraded,
            episode=self.episode.number,
            frames_in_memory=output.frames_in_memory,
            top_k_ids=output.top_k_ids,
            top_k_logits=output.top_k_logits,
            choice_scores=output.choice_scores,
        )

    def _remember(self, step_id: int, response: StepResponse) -> None:
        self.episode.remember(step_id, response.model_dump(mode="json"), self.config.replay_window)

    def _replay(self, step_id: int, digest: str) -> dict[str, Any]:
        responses = self.episode.responses
        stored = responses.get(step_id)
        last = self.episode.last_step_id
        if stored is None:
            oldest = min(responses) if responses else None
            if oldest is not None and step_id > oldest:
                raise StepConflict(
                    f"step_id {step_id} was never answered in this episode, and step ids must "
                    f"strictly increase (last answered: {last}); send a step id above {last}"
                )
            kept = f"{oldest}..{max(responses)}" if oldest is not None else "none"
            raise StepConflict(
                f"step_id {step_id} is not above the last answered step id {last} and is not in "
                f"the replay window (kept: {kept}), so it cannot be replayed; send a step id "
                f"above {last}, or reset the session to start a new episode"
            )
        known = self.episode.digests.get(step_id)
        if known is not None and known != digest:
            raise StepConflict(
                f"step_id {step_id} was answered for a different request; a retry must resend "
                "the same body (a new request needs a new step id)"
            )
        self._metrics["replayed"] += 1
        return {**stored, "replayed": True}

    def _check_time(self, t: float | None) -> None:
        last_t = self.episode.last_t
        if t is not None and last_t is not None and t < last_t:
            raise ValueError(
                f"t = {t:g} is earlier than the last step's t = {last_t:g}: frame times may "
                "not go backwards within an episode. To restart the clock, reset the session "
                f"(POST /v1/sessions/{self.session_id.id}/reset, or client.reset(...)) first"
            )

    def _commit(self, response: StepResponse, step_id: int) -> bool:
        """Hand the new state to the writer; wait for it when over the lag bound."""
        # The snapshot carries this response for replays; whoever reads it from the store reads
        # a committed step.
        self._remember(step_id, response.model_copy(update={"committed": True}))
        self._writer.submit(self._snapshot())
        if self._over_lag_bound(self._writer.status()):
            self._metrics["sync_writes"] += 1
            return self._writer.flush(self.config.store_budget_s)
        return False

    def _over_lag_bound(self, writer: WriterStatus) -> bool:
        """More answered steps, or an older one, uncommitted than the config allows."""
        if not writer.pending:
            return False
        oldest = writer.oldest_pending_at
        too_old = oldest is not None and time.monotonic() - oldest > self.config.max_lag_s
        return self._version - writer.committed_version > self.config.max_lag_steps or too_old

    def _snapshot(self) -> Snapshot:
        self._version += 1
        meta = {"format": RECORD_FORMAT, "session_id": str(self.session_id)}
        meta.update(self.episode.to_meta())
        return Snapshot(self._version, self.episode.last_step_id, self._memory, meta)

    def _store_usable(self) -> bool:
        """True if a step may use memory now. No store I/O here while the store is sick: the
        writer probes it in the background; once a probe is answered, this restores (if
        ``__init__`` could not) and resumes writing. A store that is up but behind the lag bound
        (slow) also makes the step run memoryless, so no step waits on it past the budget."""
        writer = self._writer.status()
        if writer.available and not self._needs_restore:
            if self._over_lag_bound(writer):
                self._metrics["store_slow_steps"] += 1
                return False
            return True
        if writer.available or writer.store_answers:
            try:
                if self._needs_restore:
                    self._restore()
            except StoreUnavailable:
                self._metrics["store_unavailable"] += 1
                self._writer.mark_unavailable()
                return False
            if not writer.available:
                self._writer.resume()
                self._metrics["recoveries"] += 1
            self._writer.flush(self.config.store_budget_s)  # the pending write, within budget
            return not self._over_lag_bound(self._writer.status())
        return False

    def _restore(self) -> None:
        """Load the session record; merge with what this actor answered while it could not."""
        record = self._store.get_tensors(self._key)
        self._needs_restore = False
        if record is None or self._reset_since_start:
            if self._reset_since_start:  # a reset during the outage wins over the old record
                self._writer.submit(self._snapshot())
            return
        tensors, meta = record
        if meta.get("format") != RECORD_FORMAT:
            raise ValueError(f"record {self._key!r} is not a {RECORD_FORMAT} record")
        plain = meta.get("memory")
        memory: Any = None
        if plain is not None:
            state = {k.removeprefix(MEMORY_PREFIX): v for k, v in tensors.items()}
            memory = self._policy.from_state(join_state(state, plain, f"record {self._key!r}"))
        live = self.episode
        self._memory = memory
        stored = EpisodeRecord.from_meta(meta, reset_wall=live.reset_wall)
        self.episode = stored.merged_with_answers_of(live, self.config.replay_window)
        self._writer.set_committed(stored.last_step_id)
        self.restored = True
        if live.responses:
            self._writer.submit(self._snapshot())


def request_digest(request: StepRequest) -> str:
    """A short hash of a step request's content (all fields), to tell a retry from a new one."""
    body = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
