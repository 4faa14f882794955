"""The control-rate ingress: one WebSocket per robot, one small JSON message per step.

Route ``/v1/sessions/{id}/stream`` of the HTTP app (``add_stream_route``). A 20 Hz control loop
over plain HTTP pays for a request per step (headers, routing, a new handler in the Serve
proxy and in the ingress); over this route it pays that once per connection, and each step is
one message each way.

Protocol (``services.client.TempomemClient.stream`` speaks it):

1. Handshake: the same ``Authorization: Bearer <token>`` and optional ``X-Tempomem-Namespace``
   headers as the HTTP routes. The server accepts the upgrade and sends one message:
   ``{"status": 200, "session_id": "robot/NS/ID"}``, or, for a bad token or namespace,
   ``{"status": 401 | 403 | 422, "detail": ...}`` and closes (code 1008, policy violation).
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

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, WebSocket
from pydantic import ValidationError
from starlette.status import WS_1008_POLICY_VIOLATION

from services.http_auth import Tenancy
from services.http_metrics import Metrics
from services.json_safe import json_safe
from services.schemas import NAME_PATTERN, StepRequest, StepResponse

log = logging.getLogger(__name__)

STREAM_ROUTE = "/v1/sessions/{session_id}/stream"

#: ``run_step(namespace, session_id, request)``: the step route's work; failures are the
#: route's ``HTTPException``s.
StepRunner = Callable[[str, str, StepRequest], Awaitable[StepResponse]]


def add_stream_route(
    app: FastAPI,
    run_step: StepRunner,
    tenancy: Tenancy,
    metrics: Metrics,
    max_message_bytes: int,
) -> None:
    """Mount the stream route on ``app`` (see the module doc)."""
    import re

    session_pattern = re.compile(NAME_PATTERN)

    @app.websocket(STREAM_ROUTE)
    async def stream(websocket: WebSocket, session_id: str) -> None:
        await websocket.accept()
        try:
            if not session_pattern.fullmatch(session_id):
                raise HTTPException(422, f"session id must match {NAME_PATTERN}")
            namespace = tenancy(websocket)
        except HTTPException as err:
            await websocket.send_text(_dumps({"status": err.status_code, "detail": err.detail}))
            await websocket.close(code=WS_1008_POLICY_VIOLATION)
            return
        await websocket.send_text(
            _dumps({"status": 200, "session_id": f"robot/{namespace}/{session_id}"})
        )
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            answer = await _answer(raw, namespace, session_id)
            metrics.request("WS", STREAM_ROUTE, int(answer["status"]))
            await websocket.send_text(_dumps(answer))

    async def _answer(raw: str | bytes, namespace: str, session_id: str) -> dict[str, Any]:
        """The answer to one message: a step's response, or an error with its HTTP code."""
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > max_message_bytes:
            detail = f"message of {size} bytes > {max_message_bytes}"
            return {"status": 413, "detail": detail, "step_id": None}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            return {"status": 422, "detail": f"message is not JSON: {err}", "step_id": None}
        step_id = body.get("step_id") if isinstance(body, dict) else None
        step_id = step_id if isinstance(step_id, int) and not isinstance(step_id, bool) else None
        try:
            request = StepRequest.model_validate(body)
            response = await run_step(namespace, session_id, request)
        except ValidationError as err:
            detail = json_safe(err.errors(include_url=False))
            return {"status": 422, "detail": detail, "step_id": step_id}
        except HTTPException as err:
            return {"status": err.status_code, "detail": err.detail, "step_id": step_id}
        except Exception:  # a bug must not end the robot's connection
            log.exception("stream step of %s/%s failed", namespace, session_id)
            return {"status": 500, "detail": "internal error", "step_id": step_id}
        return {"status": 200, **response.model_dump(mode="json")}


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
