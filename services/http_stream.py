"""The control-rate ingress: one WebSocket per robot, one small JSON message per step.

Route ``/v1/sessions/{id}/stream`` of the HTTP app (``add_stream_route``). A 20 Hz control loop
over plain HTTP pays for a request per step (headers, routing, a new handler in the Serve
proxy and in the ingress); over this route it pays that once per connection, and each step is
one message each way.

Protocol (``services.stream_protocol``; ``services.client.TempomemClient.stream`` speaks it):

1. Handshake: the same ``Authorization: Bearer <token>`` and optional ``X-Tempomem-Namespace``
   headers as the HTTP routes. The server accepts the upgrade and sends one message:
   ``{"status": 200, "session_id": "robot/NS/ID"}``, or, for a bad token or namespace,
   ``{"status": 401 | 403 | 422, "detail": ...}`` and closes (code 1008, policy violation).
   Where the session hosts take streams themselves (``ServeSettings.direct_stream``), the
   greeting also carries ``"direct": {"url": ..., "ticket": ...}``: the client may move to
   that URL (``services.host_stream``), which skips the HTTP proxy and the ingress per step,
   and close this connection; or ignore it and stay here.
2. Each client message is one ``StepRequest`` as JSON (the body of ``POST .../step``), text
   or UTF-8 bytes, at most ``HttpSettings.max_body_bytes``. Each answer is that step's
   ``StepResponse`` with ``"status": 200``, or ``{"status": CODE, "detail": ...,
   "step_id": ID | null}`` where ``CODE`` is what ``POST .../step`` answers for the same
   problem (409, 413, 422, 429, 503; 500 for a server bug). The connection stays open after
   an error answer; messages are answered one at a time, in order.

Validation, tenancy, idempotency by ``step_id`` and error codes are the HTTP route's own: both
call the same step function.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, WebSocket
from starlette.status import WS_1008_POLICY_VIOLATION

from services.http_auth import Tenancy
from services.http_metrics import Metrics
from services.schemas import NAME_PATTERN, StepRequest, StepResponse
from services.stream_protocol import answer_message, dumps, greeting, refusal

STREAM_ROUTE = "/v1/sessions/{session_id}/stream"

#: ``run_step(namespace, session_id, request)``: the step route's work; failures are the
#: route's ``HTTPException``s.
StepRunner = Callable[[str, str, StepRequest], Awaitable[StepResponse]]
#: ``open_direct(namespace, session_id)``: the session host's direct stream (its URL and a
#: one-use ticket), or None where hosts take no streams.
DirectOpener = Callable[[str, str], Awaitable[Mapping[str, str] | None]]


def add_stream_route(
    app: FastAPI,
    run_step: StepRunner,
    tenancy: Tenancy,
    metrics: Metrics,
    max_message_bytes: int,
    open_direct: DirectOpener | None = None,
) -> None:
    """Mount the stream route on ``app`` (see the module doc)."""
    session_pattern = re.compile(NAME_PATTERN)

    @app.websocket(STREAM_ROUTE)
    async def stream(websocket: WebSocket, session_id: str) -> None:
        await websocket.accept()
        try:
            if not session_pattern.fullmatch(session_id):
                raise HTTPException(422, f"session id must match {NAME_PATTERN}")
            namespace = tenancy(websocket)
            direct = None if open_direct is None else await open_direct(namespace, session_id)
        except HTTPException as err:
            await websocket.send_text(refusal(err.status_code, err.detail))
            await websocket.close(code=WS_1008_POLICY_VIOLATION)
            return
        await websocket.send_text(greeting(f"robot/{namespace}/{session_id}", direct))

        async def step(request: StepRequest) -> dict[str, Any]:
            response = await run_step(namespace, session_id, request)
            return response.model_dump(mode="json")

        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            answer = await answer_message(raw, max_message_bytes, step)
            metrics.request("WS", STREAM_ROUTE, int(answer["status"]))
            await websocket.send_text(dumps(answer))
