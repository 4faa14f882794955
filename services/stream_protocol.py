"""The stream protocol's messages, for every server that speaks it (one owner of the format).

A robot's stream (``services.http_stream`` through the HTTP proxy, ``services.host_stream``
straight to its session host) sends one JSON message per step and gets one JSON answer:

- the server's greeting, first: ``{"status": 200, "session_id": "robot/NS/ID"}``, with
  ``"direct": {"url": ..., "ticket": ...}`` where the session's host takes streams itself
  (``services.host_stream``); or a refusal ``{"status": 401 | 403 | 422 | 503, "detail": ...}``
  before the server closes the connection;
- per client message (one ``StepRequest`` as JSON, text or UTF-8 bytes): the step's
  ``StepResponse`` with ``"status": 200``, or ``{"status": CODE, "detail": ..., "step_id": ID |
  null}`` with the code ``POST .../step`` answers for the same problem (409, 413, 422, 429,
  503; 500 for a server bug). An error answer leaves the connection open.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException

from services.json_safe import json_safe
from services.schemas import StepRequest, error_status, error_text

log = logging.getLogger(__name__)

#: ``run_step(request)``: the step's ``StepResponse`` as JSON data; failures raise.
RunStep = Callable[[StepRequest], Awaitable[Mapping[str, Any]]]


def quiet_logger(side: str) -> logging.Logger:
    """The logger to give websockets for one side of a stream. At DEBUG, websockets logs every
    handshake header, a bearer token or ticket included: this logger never is at DEBUG unless
    someone sets it so, whatever the root logger's level."""
    logger = logging.getLogger(f"tempomem.websockets.{side}")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


def dumps(value: Mapping[str, Any]) -> str:
    """One message as compact JSON (never NaN: the answers are JSON-safe already)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def greeting(session: str, direct: Mapping[str, str] | None = None) -> str:
    body: dict[str, Any] = {"status": 200, "session_id": session}
    if direct is not None:
        body["direct"] = dict(direct)
    return dumps(body)


def refusal(status: int, detail: Any) -> str:
    return dumps({"status": status, "detail": detail})


def status_of(err: BaseException) -> int | None:
    """The HTTP status the step route answers for ``err``; None for a bug (500)."""
    if isinstance(err, HTTPException):
        return err.status_code
    return error_status(err)


async def answer_message(raw: str | bytes, max_bytes: int, run_step: RunStep) -> dict[str, Any]:
    """The answer to one client message: the step's response, or an error with its code."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        return {"status": 413, "detail": f"message of {size} bytes > {max_bytes}", "step_id": None}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return {"status": 422, "detail": f"message is not JSON: {err}", "step_id": None}
    step_id = body.get("step_id") if isinstance(body, dict) else None
    step_id = step_id if isinstance(step_id, int) and not isinstance(step_id, bool) else None
    try:
        request = StepRequest.model_validate(body)
        response = await run_step(request)
    except ValidationError as err:
        detail = json_safe(err.errors(include_url=False))
        return {"status": 422, "detail": detail, "step_id": step_id}
    except Exception as err:
        status = status_of(err)
        if status is None:  # a bug must not end the robot's connection
            log.exception("a stream step failed")
            return {"status": 500, "detail": "internal error", "step_id": step_id}
        detail = err.detail if isinstance(err, HTTPException) else error_text(err)
        return {"status": status, "detail": detail, "step_id": step_id}
    return {"status": 200, **response}
