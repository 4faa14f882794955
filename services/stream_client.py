"""A robot's steps over one WebSocket: what ``TempomemClient.stream(session)`` returns.

``StepStream`` (sync, ``websockets.sync``) and ``AsyncStepStream`` (asyncio,
``websockets.asyncio``) speak the protocol of ``services.http_stream``: the bearer token goes
in the handshake, the server's greeting confirms the session (or refuses the token: the
stream's constructor raises ``PermissionError``), then each ``step(...)`` sends one
``StepRequest`` and reads its answer. Error answers raise what the HTTP client raises for the
same status (``ValueError`` for 413/422, ``StepConflict`` for 409, ``SessionLimitReached``
for 429, ``TempomemHTTPError`` for 503...), and the stream stays usable.

Both share ``StreamCore`` (URL, headers, message encoding, answer parsing); each adds only how
a message is sent and received. A step answer is read before the next step is sent: one
step in flight per stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Unpack

from services.async_twin import async_twin_of
from services.client import StepOptions, http_result, step_payload
from services.schemas import NAMESPACE_HEADER, SessionId, StepResponse


class StreamCore:
    """The parts of a stream that do not depend on how it waits.

    Args:
        base_url: the server's ``http://`` or ``https://`` base URL.
        session: the robot session to step.
        token: bearer token (when the server has tokens).
        timeout_s: longest wait to connect and for each answer.
    """

    def __init__(
        self, base_url: str, session: SessionId, token: str | None, timeout_s: float
    ) -> None:
        scheme, sep, rest = base_url.rstrip("/").partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if session.kind != "robot":
            raise ValueError(f"streams step robot sessions, not {session.kind!r} ones")
        ws_scheme = "wss" if scheme == "https" else "ws"
        self.url = f"{ws_scheme}://{rest}/v1/sessions/{session.id}/stream"
        self.session = session
        self.timeout_s = timeout_s
        self.headers = {NAMESPACE_HEADER: session.namespace}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def message(payload: dict[str, Any]) -> str:
        """One step message: a ``step_payload`` (validated already) as compact JSON."""
        return json.dumps(payload, separators=(",", ":"))

    def greeting(self, text: str | bytes) -> None:
        """Check the server's first message: the session confirmed, or the refusal raised."""
        body = self._parse(text)
        http_result(int(body.get("status", 500)), body)

    def answer(self, text: str | bytes) -> StepResponse:
        """A step's answer, or the error its status maps to."""
        body = self._parse(text)
        status = int(body.pop("status", 500))
        if status == 200:
            return StepResponse.model_validate(body)
        body.pop("step_id", None)
        http_result(status, body)
        raise AssertionError("unreachable: http_result raises for every non-2xx status")

    def lost(self, step_id: int) -> TimeoutError:
        """The error for an answer that did not come in time. The stream is closed with it: a
        late answer would otherwise be read as the next step's."""
        return TimeoutError(
            f"no answer to step {step_id} of {self.session} within {self.timeout_s} s; the "
            "stream is closed: open another and resend the step (same step_id, same body)"
        )

    @staticmethod
    def _parse(text: str | bytes) -> dict[str, Any]:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError(f"the server sent a {type(body).__name__}, not a JSON object")
        return body


class StepStream:
    """Steps of one robot session over one WebSocket (sync). Use as a context manager, or
    call ``close()``. See ``TempomemClient.stream``."""

    def __init__(self, core: StreamCore) -> None:
        from websockets.sync.client import connect

        self.core = core
        # No per-message compression: step messages are small and it would cost CPU each way.
        self._ws = connect(
            core.url,
            additional_headers=core.headers,
            open_timeout=core.timeout_s,
            compression=None,
        )
        try:
            core.greeting(self._ws.recv(timeout=core.timeout_s))
        except BaseException:
            self._ws.close()
            raise

    def step(
        self,
        step_id: int,
        input_ids: Sequence[int],
        prefix_len: int,
        **options: Unpack[StepOptions],
    ) -> StepResponse:
        """One control step; see ``StepRequest`` and ``StepResponse``."""
        payload = step_payload(step_id, input_ids, prefix_len, **options)
        self._ws.send(self.core.message(payload))
        try:
            text = self._ws.recv(timeout=self.core.timeout_s)
        except TimeoutError:
            self.close()
            raise self.core.lost(step_id) from None
        return self.core.answer(text)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> StepStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStepStream:
    """``StepStream`` for asyncio: ``async with await client.stream(id) as s:``, then
    ``await s.step(...)``."""

    def __init__(self, core: StreamCore, ws: Any) -> None:
        self.core = core
        self._ws = ws

    @classmethod
    async def open(cls, core: StreamCore) -> AsyncStepStream:
        from websockets.asyncio.client import connect

        ws = await connect(
            core.url,
            additional_headers=core.headers,
            open_timeout=core.timeout_s,
            compression=None,
        )
        try:
            core.greeting(await asyncio.wait_for(ws.recv(), core.timeout_s))
        except BaseException:
            await ws.close()
            raise
        return cls(core, ws)

    @async_twin_of(StepStream.step)
    async def step(self, step_id: int, *args: Any, **options: Any) -> StepResponse:
        payload = step_payload(step_id, *args, **options)
        await self._ws.send(self.core.message(payload))
        try:
            text = await asyncio.wait_for(self._ws.recv(), self.core.timeout_s)
        except TimeoutError:
            await self.aclose()
            raise self.core.lost(step_id) from None
        return self.core.answer(text)

    async def aclose(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> AsyncStepStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()
