"""``async_twin_of``: an async method is called and documented like its sync twin."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from services.async_twin import async_twin_of
from services.client import AsyncTempomemClient, TempomemClient
from services.stream_client import AsyncStepStream, StepStream


class _Sync:
    def add(self, a: int, b: int = 2, *, scale: int = 1) -> int:
        """a plus b, scaled."""
        return (a + b) * scale


class _Async:
    @async_twin_of(_Sync.add)
    async def add(self, *args: Any, **kwargs: Any) -> int:
        return _Sync().add(*args, **kwargs)


def test_the_twin_takes_the_sync_signature_and_doc() -> None:
    assert inspect.signature(_Async.add) == inspect.signature(_Sync.add)
    assert _Async.add.__doc__ == "a plus b, scaled."
    assert asyncio.run(_Async().add(1, scale=3)) == 9


def test_the_twin_binds_arguments_like_the_sync_method() -> None:
    bound = inspect.signature(_Async().add).bind(1, 5, scale=2)
    assert bound.arguments == {"a": 1, "b": 5, "scale": 2}


def test_the_clients_and_streams_step_alike() -> None:
    pairs = [
        (TempomemClient.step, AsyncTempomemClient.step),
        (StepStream.step, AsyncStepStream.step),
    ]
    for sync, twin in pairs:
        assert inspect.signature(twin) == inspect.signature(sync)
        assert inspect.iscoroutinefunction(twin)
        assert twin.__doc__ == sync.__doc__
