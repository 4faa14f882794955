"""A robot's steps over one WebSocket: what ``TempomemClient.stream(session)`` returns.

``StepStream`` (sync, ``websockets.sync``) and ``AsyncStepStream`` (asyncio,
``websockets.asyncio``) speak the protocol of ``services.http_stream``: the bearer token goes
in the handshake, the server's greeting confirms the session (or refuses the token: the
stream's constructor raises ``PermissionError``). Where the greeting offers the session host's
direct stream (``services.host_stream``), the stream moves there (one ticket, one connection)
and closes the proxied one; if the host cannot be reached, or the route is ``wss://`` and the
host's URL is not, it stays on the route (``stream.direct`` says which). Then each
``step(...)`` sends one
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
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Unpack

from services.async_twin import async_twin_of
from services.client import StepOptions, http_result, step_payload
from services.schemas import NAMESPACE_HEADER, SessionId, StepResponse
from services.stream_protocol import quiet_logger

log = logging.getLogger(__name__)

#: A direct stream offered by a greeting: its URL and handshake headers.
DirectOffer = tuple[str, dict[str, str]]


class StreamCore:
    """The parts of a stream that do not depend on how it waits.

    Args:
        base_url: the server's ``http://`` or ``https://`` base URL.
        session: the robot session to step.
        token: bearer token (when the server has tokens).
        timeout_s: longest wait to connect and for each answer.
        direct: move to the session host's direct stream when the server offers one.
    """

    def __init__(
        self,
        base_url: str,
        session: SessionId,
        token: str | None,
        timeout_s: float,
        direct: bool = True,
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
        self.direct = direct
        self.headers = {NAMESPACE_HEADER: session.namespace}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def message(payload: dict[str, Any]) -> str:
        """One step message: a ``step_payload`` (validated already) as compact JSON."""
        return json.dumps(payload, separators=(",", ":"))

    def greeting(self, text: str | bytes) -> DirectOffer | None:
        """Check the server's first message: the session confirmed (with the direct stream it
        offers, to take, if any), or the refusal raised."""
        body = self._parse(text)
        http_result(int(body.get("status", 500)), body)
        return self._offer(body.get("direct"))

    def _offer(self, offer: Any) -> DirectOffer | None:
        if not self.direct or not isinstance(offer, dict):
            return None
        url, ticket = offer.get("url"), offer.get("ticket")
        if not isinstance(url, str) or not isinstance(ticket, str):
            return None
        if not url.startswith("wss://" if self.url.startswith("wss://") else ("ws://", "wss://")):
            log.info("staying on the stream route: it is wss:// and the host's stream is not")
            return None
        return url, {"Authorization": f"Bearer {ticket}"}

    def declined(self, url: str, err: BaseException) -> None:
        """Log why a direct stream was not taken (the ticket is never in the text)."""
        log.warning(
            "staying on the stream route: the session host's stream at %s failed: %s: %s",
            url,
            type(err).__name__,
            err,
        )

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

    def closed(self, step_id: int, err: Exception) -> ConnectionError:
        """The error for a stream the server closed (its session host restarted, say)."""
        return ConnectionError(
            f"the stream of {self.session} was closed before step {step_id} was answered "
            f"({err}); open another and resend the step (same step_id, same body)"
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
        self.core = core
        self.direct = False  # whether the steps go straight to the session host
        self._ws, offer = self._connect(core.url, core.headers)
        if offer is not None:
            url, headers = offer
            try:
                direct, _ = self._connect(url, headers)
            except Exception as err:
                core.declined(url, err)
            else:
                self._ws.close()
                self._ws, self.direct = direct, True

    def _connect(self, url: str, headers: dict[str, str]) -> tuple[Any, DirectOffer | None]:
        """A connection to ``url``, greeted, and the direct stream its greeting offers."""
        from websockets.sync.client import connect

        # No per-message compression: step messages are small and it would cost CPU each way.
        ws = connect(
            url,
            additional_headers=headers,
            open_timeout=self.core.timeout_s,
            compression=None,
            logger=quiet_logger("client"),
        )
        try:
            return ws, self.core.greeting(ws.recv(timeout=self.core.timeout_s))
        except BaseException:
            ws.close()
            raise

    def step(
        self,
        step_id: int,
        input_ids: Sequence[int],
        prefix_len: int,
        **options: Unpack[StepOptions],
    ) -> StepResponse:
        """One control step; see ``StepRequest`` and ``StepResponse``."""
        from websockets.exceptions import ConnectionClosed

        payload = step_payload(step_id, input_ids, prefix_len, **options)
        try:
            self._ws.send(self.core.message(payload))
            text = self._ws.recv(timeout=self.core.timeout_s)
        except TimeoutError:
            self.close()
            raise self.core.lost(step_id) from None
        except ConnectionClosed as err:
            raise self.core.closed(step_id, err) from None
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

    def __init__(self, core: StreamCore, ws: Any, direct: bool = False) -> None:
        self.core = core
        self._ws = ws
        self.direct = direct  # whether the steps go straight to the session host

    @classmethod
    async def open(cls, core: StreamCore) -> AsyncStepStream:
        ws, offer = await cls._connect(core, core.url, core.headers)
        if offer is not None:
            url, headers = offer
            try:
                direct, _ = await cls._connect(core, url, headers)
            except Exception as err:
                core.declined(url, err)
            else:
                await ws.close()
                return cls(core, direct, direct=True)
        return cls(core, ws)

    @staticmethod
    async def _connect(
        core: StreamCore, url: str, headers: dict[str, str]
    ) -> tuple[Any, DirectOffer | None]:
        """A connection to ``url``, greeted, and the direct stream its greeting offers."""
        from websockets.asyncio.client import connect

        ws = await connect(
            url,
            additional_headers=headers,
            open_timeout=core.timeout_s,
            compression=None,
            logger=quiet_logger("client"),
        )
        try:
            return ws, core.greeting(await asyncio.wait_for(ws.recv(), core.timeout_s))
        except BaseException:
            await ws.close()
            raise

    @async_twin_of(StepStream.step)
    async def step(self, step_id: int, *args: Any, **options: Any) -> StepResponse:
        from websockets.exceptions import ConnectionClosed

        payload = step_payload(step_id, *args, **options)
        try:
            await self._ws.send(self.core.message(payload))
            text = await asyncio.wait_for(self._ws.recv(), self.core.timeout_s)
        except TimeoutError:
            await self.aclose()
            raise self.core.lost(step_id) from None
        except ConnectionClosed as err:
            raise self.core.closed(step_id, err) from None
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
