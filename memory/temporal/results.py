"""What a tool result says about itself: whether the call failed, and how long the result
declares itself fresh.

Status. A result failed when its message is flagged (MCP `isError`, Anthropic `is_error`,
LangChain status "error"); when its JSON carries a non-empty error field, `"ok"/"success":
false`, an HTTP error code, or a failure status (`"status": "failed"`, "error", "timeout", ...)
in an envelope (few keys, or a message/reason/detail/code beside it); when its text starts with
an error marker ("Error:", "Traceback") or, being short, says it timed out, is overloaded,
unavailable, rate limited, refused or denied. A result that is "", "[]", "{}", "null" (or a dict
of only empty values) is empty. "Not found" is an answer, not a failure.

Declared freshness. `Cache-Control: max-age=N` (`no-store`/`no-cache` mean 0, `immutable` a
year), `Expires: <date>`, and fields `ttl`, `ttl_s`, `max_age`, `expires_in`, `x-horizon-s`
(seconds; `*_ms` in milliseconds) or `expires_at`, `valid_until`, `expires`, `next_update`
(absolute times), at the top of a JSON result or under its `_meta`, `meta`, `headers` or
`cache`, or on the result message itself.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from memory.clock import parse_timestamp
from memory.temporal.horizons import wordset


class ResultStatus(StrEnum):
    """How a tool call ended, as far as its result tells."""

    OK = "ok"
    ERROR = "error"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    EMPTY = "empty"


ERROR_KEYS = (
    "error",
    "errors",
    "error_message",
    "errormessage",
    "error_code",
    "exception",
    "fault",
)
STATUS_KEYS = ("status", "state", "outcome", "result")
FAILED_STATES = wordset(
    """error failed failure fail timeout timed_out unavailable rejected denied refused
    overloaded rate_limited throttled aborted"""
)
ENVELOPE_KEYS = frozenset({"message", "reason", "detail", "details", "code", "msg", "error"})
EMPTY_TEXTS = frozenset({"", "[]", "{}", "null", "none", "undefined", '""', "nil"})
SHORT_TEXT = 300

_KIND_PATTERNS: tuple[tuple[ResultStatus, re.Pattern[str]], ...] = (
    (ResultStatus.TIMEOUT, re.compile(r"\btim(?:ed|es)?[ -]?out\b|\btimeout\b")),
    (
        ResultStatus.RATE_LIMITED,
        re.compile(r"\brate[- ]?limit|\btoo many requests\b|\bquota (?:exceeded|exhausted)\b"),
    ),
    (
        ResultStatus.UNAVAILABLE,
        re.compile(
            r"\boverloaded\b|\bat capacity\b|\bunder maintenance\b|\btry again later\b|"
            r"\b(?:service|server|api|backend|upstream|endpoint|system|tool|site|website)\s+"
            r"(?:is\s+|was\s+)?(?:temporarily\s+)?(?:unavailable|down|busy)\b|"
            r"\btemporarily unavailable\b|\bbad gateway\b"
        ),
    ),
    (
        ResultStatus.REFUSED,
        re.compile(
            r"\b(?:access|permission) denied\b|\bforbidden\b|\bunauthori[sz]ed\b|"
            r"\bnot authori[sz]ed\b|\b(?:request|call|connection) (?:was )?(?:refused|denied|"
            r"rejected)\b|\b(?:i|we) (?:can't|cannot|won't|am unable to|are unable to) "
            r"(?:help|assist|comply)\b"
        ),
    ),
)
_HTTP_CODE = re.compile(r"\b(?:http|error|status|code)\s*:?\s*([45]\d\d)\b")
_CODE_KIND = {408: ResultStatus.TIMEOUT, 504: ResultStatus.TIMEOUT, 429: ResultStatus.RATE_LIMITED}
_CODE_KIND |= {502: ResultStatus.UNAVAILABLE, 503: ResultStatus.UNAVAILABLE}
_CODE_KIND |= {401: ResultStatus.REFUSED, 403: ResultStatus.REFUSED}
_FAILURE_TEXT = re.compile(
    r"\b(?:error|exception|failed|failure|could ?n[o']t|unable to)\b(?! (?:find|locate))"
)
_LEADING_ERROR = re.compile(r"^\W*(?:error|exception|traceback|fatal|failed|failure)\b")


@functools.lru_cache(maxsize=4096)
def parse_json(text: str) -> Any:
    """The JSON value of `text`, or None when it is not JSON."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return None


def result_status(text: str, flagged_error: bool = False) -> ResultStatus:
    """The status of a result (see the module docstring)."""
    status = _text_status(text)
    if flagged_error and status in (ResultStatus.OK, ResultStatus.EMPTY):
        return ResultStatus.ERROR
    return status


@functools.lru_cache(maxsize=4096)
def _text_status(text: str) -> ResultStatus:
    stripped = text.strip()
    if stripped.lower() in EMPTY_TEXTS:
        return ResultStatus.EMPTY
    value = parse_json(stripped)
    if isinstance(value, Mapping):
        return _dict_status(value)
    if isinstance(value, list):
        return ResultStatus.EMPTY if not value else ResultStatus.OK
    lowered = stripped.lower()
    if _LEADING_ERROR.search(lowered):
        return _kind(lowered)
    if len(lowered) <= SHORT_TEXT:
        kind = _kind(lowered, default=ResultStatus.OK)
        if kind is not ResultStatus.OK or _FAILURE_TEXT.search(lowered):
            return kind if kind is not ResultStatus.OK else ResultStatus.ERROR
    return ResultStatus.OK


def _kind(text: str, default: ResultStatus = ResultStatus.ERROR) -> ResultStatus:
    found = next((kind for kind, pattern in _KIND_PATTERNS if pattern.search(text)), None)
    if found is not None:
        return found
    code = _HTTP_CODE.search(text)
    if code is None or int(code.group(1)) == 404:  # "not found" is an answer
        return default
    return _CODE_KIND.get(int(code.group(1)), ResultStatus.ERROR)


def _dict_status(value: Mapping[str, Any]) -> ResultStatus:
    keys = {str(k).lower(): v for k, v in value.items()}
    if keys.get("iserror") is True or keys.get("is_error") is True:
        return _kind(_flat(value))
    for key in ERROR_KEYS:
        if _present(keys.get(key)):
            return _kind(_flat(keys[key]))
    if keys.get("ok") is False or keys.get("success") is False:
        return _kind(_flat(value))
    envelope = len(keys) <= 4 or bool(ENVELOPE_KEYS & keys.keys())
    for key in STATUS_KEYS:
        state = keys.get(key)
        if isinstance(state, str) and envelope:
            word = state.strip().lower().replace(" ", "_").replace("-", "_")
            if word in FAILED_STATES:
                return _kind(_flat(value))
    code: Any = next((keys[k] for k in ("status_code", "statuscode", "code") if k in keys), None)
    if envelope and _error_code(code):
        return _CODE_KIND.get(code) or _kind(_flat(value))
    if all(not _present(v) for v in value.values()):
        return ResultStatus.EMPTY
    return ResultStatus.OK


def _error_code(code: Any) -> bool:
    """An HTTP-style error code; 404 ("not found") is an answer, not a failure."""
    return (
        isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 and code != 404
    )


def _present(value: Any) -> bool:
    return value is not None and value is not False and value != "" and value != [] and value != {}


def _flat(value: Any) -> str:
    return json.dumps(value, default=str).lower()


TERMINAL_STATES = wordset(
    """delivered completed complete cancelled canceled refunded closed resolved finished done
    expired archived succeeded success fulfilled settled"""
)


IN_PROGRESS_STATES = wordset(
    """pending processing queued in_progress running submitted scheduled awaiting initiated
    requested waiting started accepted"""
)


def terminal_state(text: str) -> str | None:
    """A top-level `status`/`state` that never changes again ("delivered", "completed", ...)."""
    state = _state(text)
    return state if state in TERMINAL_STATES else None


def in_progress(text: str) -> bool:
    """Whether a top-level `status`/`state` says the work is still going on ("pending", ...)."""
    return _state(text) in IN_PROGRESS_STATES


@functools.lru_cache(maxsize=4096)
def _state(text: str) -> str | None:
    value = parse_json(text)
    if not isinstance(value, Mapping):
        return None
    for key in ("status", "state"):
        state = value.get(key)
        if isinstance(state, str):
            return state.strip().lower().replace(" ", "_").replace("-", "_")
    return None


@dataclass(frozen=True)
class DeclaredFreshness:
    """Freshness a result declares: seconds from the result (`ttl_s`) or a time (`expires_at`)."""

    ttl_s: float | None
    expires_at: float | None
    source: str

    def horizon_s(self, result_time: float | None) -> float | None:
        """The declared horizon measured from the result's time (None if it cannot be)."""
        if self.ttl_s is not None:
            return self.ttl_s
        if self.expires_at is None or result_time is None:
            return None
        return max(0.0, self.expires_at - result_time)


TTL_FIELDS = {
    "max_age": 1.0,
    "maxage": 1.0,
    "s_maxage": 1.0,
    "ttl": 1.0,
    "ttl_s": 1.0,
    "ttl_seconds": 1.0,
    "ttl_sec": 1.0,
    "x_horizon_s": 1.0,
    "horizon_s": 1.0,
    "fresh_for_s": 1.0,
    "valid_for_s": 1.0,
    "valid_for": 1.0,
    "expires_in": 1.0,
    "expires_in_s": 1.0,
    "cache_ttl": 1.0,
    "ttl_ms": 1e-3,
    "max_age_ms": 1e-3,
    "expires_in_ms": 1e-3,
}
EXPIRY_FIELDS = wordset(
    """expires expires_at expiry expiration expiration_time valid_until valid_to good_until
    fresh_until stale_after next_update next_update_at nextupdate"""
)
_CACHE_CONTROL_LINE = re.compile(r"cache-control\s*:\s*([^\n\r]+)", re.IGNORECASE)
_EXPIRES_LINE = re.compile(r"\bexpires\s*:\s*([^\n\r]+)", re.IGNORECASE)
_MAX_AGE = re.compile(r"\b(?:s-)?max-?age\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def declared_freshness(
    text: str, extra: Mapping[str, Any] | None = None
) -> DeclaredFreshness | None:
    """Freshness declared by a result's text or JSON, or by its message's `extra` fields."""
    if extra:
        found = _from_mapping(extra, "message", depth=0)
        if found is not None:
            return found
    return _text_freshness(text)


@functools.lru_cache(maxsize=4096)
def _text_freshness(text: str) -> DeclaredFreshness | None:
    value = parse_json(text)
    if isinstance(value, Mapping):
        return _from_mapping(value, "result", depth=0)
    if value is not None:
        return None
    line = _CACHE_CONTROL_LINE.search(text)
    if line:
        found = cache_control(line.group(1), "Cache-Control")
        if found is not None:
            return found
    line = _EXPIRES_LINE.search(text)
    if line:
        expires = _absolute_time(line.group(1).strip())
        if expires is not None:
            return DeclaredFreshness(None, expires, "Expires")
    return None


def cache_control(value: str, source: str) -> DeclaredFreshness | None:
    """A `Cache-Control` value as a declared freshness (None if it declares none)."""
    lowered = value.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return DeclaredFreshness(0.0, None, f"{source} no-cache")
    match = _MAX_AGE.search(lowered)
    if match:
        return DeclaredFreshness(float(match.group(1)), None, f"{source} max-age")
    if "immutable" in lowered:
        return DeclaredFreshness(365 * 86400.0, None, f"{source} immutable")
    return None


def _from_mapping(value: Mapping[str, Any], where: str, depth: int) -> DeclaredFreshness | None:
    fields = {_field(k): (k, v) for k, v in value.items()}
    control = fields.get("cachecontrol", (None, None))[1]
    if isinstance(control, str):
        found = cache_control(control, f"{where} Cache-Control")
        if found is not None:
            return found
    for key, scale in _TTL_SCALE.items():
        name, raw = fields.get(key, (key, None))
        seconds = _number(raw)
        if seconds is not None and seconds >= 0:
            return DeclaredFreshness(seconds * scale, None, f"{where} {name}")
    for key in _EXPIRY & fields.keys():
        name, raw = fields[key]
        expires = _absolute_time(raw)
        if expires is not None:
            return DeclaredFreshness(None, expires, f"{where} {name}")
    if depth == 0:
        for key in ("meta", "headers", "cache"):
            name, nested = fields.get(key, (key, None))
            if isinstance(nested, Mapping):
                found = _from_mapping(nested, f"{where} {name}", depth + 1)
                if found is not None:
                    return found
    return None


def _field(key: Any) -> str:
    """A field name folded for matching: `Cache-Control`, `cache_control`, `cacheControl` all
    read `cachecontrol`; `_meta` reads `meta`."""
    return str(key).lower().replace("-", "").replace("_", "")


_TTL_SCALE = {_field(k): scale for k, scale in TTL_FIELDS.items()}
_EXPIRY = frozenset(_field(k) for k in EXPIRY_FIELDS)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _absolute_time(value: Any) -> float | None:
    """An ISO-8601 / HTTP-date / epoch time in seconds, or None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return parse_timestamp(float(value) / (1000.0 if value > 1e11 else 1.0))
        except ValueError:
            return None
    if not isinstance(value, str):
        return None
    try:
        return parse_timestamp(value.strip())
    except ValueError:
        pass
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None
