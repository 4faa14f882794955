"""``async_twin_of``: an async method declared once, by its sync twin's arguments.

The sync and async clients (and streams) have the same methods; each async one is a thin
adapter over the same core (request building, answer parsing) that awaits where the sync one
blocks. Writing its parameter list a second time would let the two drift apart, so the async
method takes ``*args, **kwargs`` and this decorator gives it the sync method's signature, for
type checkers (``ParamSpec``) and for ``help()`` / IDEs (``__signature__``) alike::

    class AsyncStepStream:
        @async_twin_of(StepStream.step)
        async def step(self, step_id: int, *args: Any, **options: Any) -> StepResponse: ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def async_twin_of(
    sync: Callable[Concatenate[Any, P], R],
) -> Callable[
    [Callable[..., Coroutine[Any, Any, R]]], Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]
]:
    """Decorate an async method so that it is called, and documented, like ``sync``."""

    def decorate(
        twin: Callable[..., Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
        twin.__signature__ = inspect.signature(sync)  # type: ignore[attr-defined]
        twin.__doc__ = twin.__doc__ or sync.__doc__
        return twin

    return decorate
