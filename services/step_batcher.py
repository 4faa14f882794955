"""``StepBatcher``: concurrent steps bound for one session host go as one call.

A step that finds no call in flight waits ``linger_s`` (0: none; it still waits for the next
turn of the event loop, so the steps of one burst share a call) for others to join, then goes;
steps that arrive while a call is in flight wait for it and then go together, up to
``max_batch`` per call. Robots ticking together cost the host one call and one model forward
instead of one each (``SessionHost.step_many``). Without the linger, batches form only where
the host itself is the bottleneck; on a machine whose CPU the ingress and proxy share with the
hosts, a few milliseconds of linger is what lets them form (BENCHMARKS.md, "Service overhead
and load").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

#: ``send(items)``: one call for several items; a result or an exception per item, in order.
SendMany = Callable[[list[Any]], Awaitable[Sequence[Any]]]


class StepBatcher:
    """Coalesces ``submit(item)`` calls into ``send(items)`` calls (see the module doc)."""

    def __init__(
        self, send: SendMany, max_batch: int = 64, linger_s: float = 0.0, max_pending: int = 1024
    ) -> None:
        if not 1 <= max_batch <= max_pending:
            raise ValueError(f"need 1 <= max_batch <= max_pending, got {max_batch}, {max_pending}")
        if not 0.0 <= linger_s <= 1.0:
            raise ValueError(f"linger_s must be in [0, 1] seconds, got {linger_s}")
        self.send = send
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.max_pending = max_pending
        self.calls = 0  # send calls so far (batches), for benchmarks and tests
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, item: Any) -> Any:
        """``item``'s result, or its exception raised here. ``ConnectionError`` at once when
        ``max_pending`` steps already wait (a host that stopped answering must not make the
        ingress hold an unbounded queue)."""
        if len(self._pending) >= self.max_pending:
            self._pending = [entry for entry in self._pending if not entry[1].done()]
            if len(self._pending) >= self.max_pending:
                raise ConnectionError(
                    f"{len(self._pending)} steps already wait for this session host; it is "
                    "not keeping up (try again later)"
                )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        if self.linger_s > 0 and len(self._pending) < self.max_batch:
            await asyncio.sleep(self.linger_s)
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self.calls += 1
            try:
                results: Sequence[Any] = await self.send([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} steps")
            except Exception as err:  # the call itself failed: every step in it did
                results = [err] * len(batch)
            except BaseException:  # cancelled (loop shutting down): nobody waits forever
                for _, future in batch + self._pending:
                    if not future.done():
                        future.set_exception(ConnectionError("step batcher stopped"))
                self._pending.clear()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller gave up (timeout, cancelled)
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
