"""Who a request is: bearer tokens -> tenant namespaces, and the settings that hold them.

With tokens configured (``HttpSettings.tokens``: token -> namespace) a request needs
``Authorization: Bearer <token>`` (else 401), and an ``X-Tempomem-Namespace`` header naming
another namespace is 403. Without tokens (development, loopback) the namespace is the header's,
default ``"default"``. Tokens are secrets: no error or repr shows one.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Annotated

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import HTTPConnection

from services.schemas import NAME_PATTERN, NAMESPACE_HEADER, SessionId

DEFAULT_NAMESPACE = "default"
DEFAULT_MAX_BODY_BYTES = 1 << 20
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")


def check_token(token: str, where: str = "token") -> str:
    """A bearer token is 16..512 URL-safe characters (RFC 6750's token68 alphabet, no ':').
    The error never shows the token."""
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(
            f"{where}: a token needs {MIN_TOKEN_CHARS}..{MAX_TOKEN_CHARS} characters, "
            f"this one has {len(token)}"
        )
    if not _TOKEN_PATTERN.fullmatch(token):
        raise ValueError(f"{where}: a token may hold only letters, digits and ._~+/=-")
    return token


class HttpSettings(BaseModel):
    """Authentication and limits of the HTTP app."""

    # Tokens are secrets: never in a repr or in a validation error's echo of the input.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    tokens: dict[str, Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=dict,
        repr=False,
        description="Bearer token -> namespace. Empty: no auth; namespace from the header.",
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=64 << 20)

    @field_validator("tokens")
    @classmethod
    def _strong_tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        for number, token in enumerate(tokens, start=1):
            check_token(token, f"token #{number}")
        return tokens


class Tenancy:
    """A FastAPI dependency: the request's namespace (``Depends(Tenancy(settings.tokens))``);
    also called directly with a WebSocket (an ``HTTPConnection`` too)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = dict(tokens)

    def __call__(self, request: HTTPConnection) -> str:
        header = request.headers.get(NAMESPACE_HEADER)
        if self.tokens:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            namespace = None
            if scheme.lower() == "bearer" and token:
                for known, ns in self.tokens.items():
                    if hmac.compare_digest(known.encode(), token.strip().encode()):
                        namespace = ns
            if namespace is None:
                raise HTTPException(
                    401,
                    "missing or invalid bearer token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if header is not None and header != namespace:
                raise HTTPException(403, f"this token belongs to another namespace than {header!r}")
            return namespace
        namespace = header or DEFAULT_NAMESPACE
        try:
            SessionId(kind="robot", namespace=namespace, id="probe")
        except ValueError:
            raise HTTPException(
                422, f"header {NAMESPACE_HEADER} must match {NAME_PATTERN}"
            ) from None
        return namespace
