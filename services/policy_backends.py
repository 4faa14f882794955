"""How a session actor reaches its policy: one protocol, three backends, picked by placement.

A session actor holds its memory as an opaque ``memory`` value and hands it to a backend with
each step; the backend returns the step's output and the new memory. What ``memory`` is depends
on where the policy runs:

- ``ActorPolicy``: the shared named ``PolicyWorker`` actor (``WorkerSpec.placement="shared"``).
  Memory is packed ``kv_store`` codec bytes, since it crosses processes every step.
- ``ServePolicy``: a Ray Serve ``PolicyDeployment`` (replicated, batching). Memory as above.
- ``InlinePolicy``: a ``StepRunner`` in the session actor's own process
  (``placement="session"``). Memory is the state dict itself: no transfer, no packing, and the
  engine skips reloading the state it already holds. One hop per step instead of two.

``to_state`` / ``from_state`` convert a backend's memory to and from a plain state dict (what
the session record in the store holds), so the session's write-behind and restore do not care
which backend runs the steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

from kv_store.state import decode_state, encode_state
from services.policy_worker import (
    ModelFactory,
    StepEngine,
    StepOutput,
    StepRunner,
    WorkerSpec,
    load_model,
    worker_handle,
)
from services.schemas import StepRequest

T = TypeVar("T")
R = TypeVar("R")


def each_or_error(run: Callable[[T], R], items: Iterable[T]) -> list[R | Exception]:
    """``run(item)`` for every item, an item's exception in its place if it raises."""
    results: list[R | Exception] = []
    for item in items:
        try:
            results.append(run(item))
        except Exception as err:
            results.append(err)
    return results


class PolicyBackend(Protocol):
    """Runs one step of a session given that session's memory (None: an empty memory)."""

    def step(
        self, memory: Any, request: StepRequest, timeout_s: float
    ) -> tuple[StepOutput, Any]: ...

    def step_many(
        self, items: Sequence[tuple[Any, StepRequest]], timeout_s: float
    ) -> list[tuple[StepOutput, Any] | Exception]:
        """Several sessions' steps, ``(memory, request)`` each, batched where the backend can;
        a failing item yields its exception in its place."""
        ...

    def to_state(self, memory: Any) -> Mapping[str, Any] | None: ...

    def from_state(self, state: Mapping[str, Any] | None) -> Any: ...


class RemotePolicy:
    """A policy in another process; memory travels as packed codec bytes each step."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def step(
        self, memory: bytes | None, request: StepRequest, timeout_s: float
    ) -> tuple[StepOutput, bytes]:
        return self._result(self._submit(memory, request), timeout_s)

    def step_many(
        self, items: Sequence[tuple[bytes | None, StepRequest]], timeout_s: float
    ) -> list[tuple[StepOutput, bytes] | Exception]:
        """All items sent at once (the Serve deployment batches them), then awaited, all
        within ``timeout_s`` together (a hung policy costs one timeout, not one per item)."""
        deadline = time.monotonic() + timeout_s
        pending = [self._submit(memory, request) for memory, request in items]
        return each_or_error(
            lambda call: self._result(call, max(0.0, deadline - time.monotonic())), pending
        )

    def _submit(self, memory: bytes | None, request: StepRequest) -> Any:
        return self.handle.step.remote(memory, request.model_dump(mode="json"))

    def _result(self, pending: Any, timeout_s: float) -> tuple[StepOutput, bytes]:
        output, new_memory = self._wait(pending, timeout_s)
        return StepOutput.model_validate(output), new_memory

    def to_state(self, memory: bytes | None) -> Mapping[str, Any] | None:
        return None if memory is None else decode_state(memory)

    def from_state(self, state: Mapping[str, Any] | None) -> bytes | None:
        return None if state is None else encode_state(state)

    def _wait(self, pending: Any, timeout_s: float) -> Any:
        raise NotImplementedError


class ActorPolicy(RemotePolicy):
    """The shared ``PolicyWorker`` actor named by the spec (created on first use)."""

    def _wait(self, pending: Any, timeout_s: float) -> Any:
        import ray

        return ray.get(pending, timeout=timeout_s)


class ServePolicy(RemotePolicy):
    """A Ray Serve ``PolicyDeployment`` (its ``@serve.batch`` batches concurrent sessions)."""

    def _wait(self, pending: Any, timeout_s: float) -> Any:
        return pending.result(timeout_s=timeout_s)


class InlinePolicy:
    """A ``StepRunner`` in this process; memory is the state dict the runner returned. One
    call at a time: the runner's model carries one step's hooks (a host's Ray calls and its
    direct streams may call from two threads)."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner
        self._lock = threading.Lock()

    def step(
        self, memory: Mapping[str, Any] | None, request: StepRequest, timeout_s: float
    ) -> tuple[StepOutput, dict[str, Any]]:
        del timeout_s  # in-process: nothing to wait for
        with self._lock:
            return self.runner.run(memory, request)

    def step_many(
        self, items: Sequence[tuple[Mapping[str, Any] | None, StepRequest]], timeout_s: float
    ) -> list[tuple[StepOutput, dict[str, Any]] | Exception]:
        """One forward for the items whose shapes agree (``StepEngine.run_many``); a runner
        without ``run_many`` steps them one by one."""
        del timeout_s
        run_many = getattr(self.runner, "run_many", None)
        with self._lock:
            if run_many is not None:
                return cast(
                    list[tuple[StepOutput, dict[str, Any]] | Exception],
                    run_many(list(items), return_exceptions=True),
                )
            return each_or_error(lambda item: self.runner.run(*item), items)

    def to_state(self, memory: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        return memory

    def from_state(self, state: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        return state


def inline_runner(spec: WorkerSpec, factory: ModelFactory | None = None) -> StepRunner:
    """The in-process runner for ``spec``: ``factory()`` when it returns a ``StepRunner``
    already, else a ``StepEngine`` on the model it (or ``spec.model``) builds."""
    built = factory() if factory is not None else load_model(spec)
    if isinstance(built, StepRunner):
        return built
    return StepEngine(built, spec.tempofit)


def policy_backend(
    spec: WorkerSpec,
    *,
    ray_namespace: str,
    factory: ModelFactory | None = None,
    serve_deployment: tuple[str, str] | None = None,
) -> PolicyBackend:
    """The backend a session actor steps through.

    ``serve_deployment`` ``(app, deployment)`` picks that Serve deployment; otherwise
    ``spec.placement`` picks the shared ``PolicyWorker`` actor or an in-process engine.
    """
    if spec.placement == "session":
        return InlinePolicy(inline_runner(spec, factory))
    if serve_deployment is not None:
        from ray import serve

        app, deployment = serve_deployment
        return ServePolicy(serve.get_deployment_handle(deployment, app_name=app))
    return ActorPolicy(worker_handle(spec, ray_namespace=ray_namespace, factory=factory))
