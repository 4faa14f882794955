"""Requests and responses that cross a process boundary (client -> session actor -> policy
worker, and later HTTP): pydantic v2 models, validated on every side.

Bad input is a ``pydantic.ValidationError`` whose ``loc`` names the field (``input_ids``,
``prefix_len``, ``namespace``...), raised before anything reaches a store or a model. Models
are frozen and reject unknown fields, so a typo (``prefixlen=``) fails loudly. Across Ray they
travel as plain JSON dicts (``model_dump(mode="json")``) and are re-validated on arrival, never
as pickled objects.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

SessionKind = Literal["robot", "agent"]

#: Names of tenants (namespaces) and sessions: the store's namespace rule, starting with a letter
#: or digit (so no "." or ".." that a path or a key prefix could misread).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
#: Agent session ids over HTTP: a session id (``NAME_PATTERN``) that ``AgentEventLog`` also
#: takes (it wants a letter or digit first), so a bad id fails once, at the route.
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
#: HTTP header naming the tenant namespace when no bearer token decides it.
NAMESPACE_HEADER = "X-Tempomem-Namespace"
#: Most tokens one step may send (prefix + suffix).
MAX_INPUT_TOKENS = 8192
#: Most candidate actions one step may score, and most tokens per candidate.
MAX_CHOICES = 64
MAX_CHOICE_TOKENS = 256
#: Most next-token logits a response may carry.
MAX_TOP_K = 64
#: Largest token id accepted before the model sees it (the worker checks the real vocab size).
MAX_TOKEN_ID = 2**31 - 1

TokenId = Annotated[StrictInt, Field(ge=0, le=MAX_TOKEN_ID)]
#: Largest step id: every id a JSON number holds exactly (a double's 53-bit integer range).
MAX_STEP_ID = 2**53
#: Largest frame time ``t``: 10^12 of the gap unit (seconds: ~31,700 years; steps: at 1 kHz,
#: ~31 years). Bounded so that one absurd time cannot be stored and refuse every later frame.
MAX_FRAME_TIME = 1e12


class SessionNotFound(LookupError):
    """A read or delete of a session that does not exist (HTTP 404); nothing is created."""


class SessionLimitReached(RuntimeError):
    """A new session would take a tenant over its cap (HTTP 429)."""


class StepConflict(ValueError):
    """A step id that conflicts with what the session already answered (HTTP 409): a retry
    with a different body, or an id that is not above the last one and cannot be replayed."""


#: The service's own errors and their HTTP statuses, most specific first (``StepConflict`` is
#: a ``ValueError``, which answers 422): the server maps an error to its status with it and
#: the client maps a status back to the error.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (StepConflict, 409),
    (SessionNotFound, 404),
    (SessionLimitReached, 429),
    (ValueError, 422),
)


def error_status(err: BaseException) -> int | None:
    """The HTTP status the service answers for ``err``: 503 when a session or its policy could
    not be reached in time (``TimeoutError``, ``ConnectionError``), else ``ERROR_STATUS``'s;
    None for anything else (a bug: 500)."""
    if isinstance(err, TimeoutError | ConnectionError):
        return 503
    return next((code for kind, code in ERROR_STATUS if isinstance(err, kind)), None)


def error_text(err: BaseException) -> str:
    """The user-facing message of a (possibly Ray-wrapped) error: its cause, at most 2,000
    characters (its type's name when it has no text)."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip()
    return text[:2000] or type(cause).__name__


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SessionId(_Strict):
    """One robot or agent session of one tenant.

    ``namespace`` is the tenant: it names the store namespace and is part of the actor name, so
    two tenants with the same ``id`` have two independent sessions.
    """

    kind: SessionKind = Field(description="'robot' (TempoFit control loop) or 'agent'.")
    namespace: str = Field(
        pattern=NAME_PATTERN,
        description="Tenant; [A-Za-z0-9_.-]{1,64} starting with a letter or digit.",
    )
    id: str = Field(
        pattern=NAME_PATTERN,
        description="Session id; [A-Za-z0-9_.-]{1,64} starting with a letter or digit.",
    )

    @property
    def store_key(self) -> str:
        """The record key of this session inside the tenant's store namespace."""
        return f"session/{self.kind}/{self.id}"

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.id}"


class StepRequest(_Strict):
    """One control step of a session.

    ``input_ids`` is the whole step sequence; its first ``prefix_len`` tokens are the frame's
    prefix (observation + instruction) whose K/V TempoFit remembers. ``step_id`` orders steps
    and makes them idempotent: a step id at or below the last one answered is not applied again.
    """

    step_id: StrictInt = Field(
        ge=0,
        le=MAX_STEP_ID,
        description="Strictly increasing per episode (0..2**53); a retry resends the same id "
        "and the same body.",
    )
    input_ids: list[TokenId] = Field(min_length=1, max_length=MAX_INPUT_TOKENS)
    prefix_len: StrictInt = Field(ge=1, description="Prefix tokens, 1..len(input_ids).")
    t: float | None = Field(
        default=None,
        allow_inf_nan=False,
        ge=0.0,
        le=MAX_FRAME_TIME,
        description="Frame time in the worker config's gap unit, 0..1e12, not decreasing within "
        "an episode; None = the step counter.",
    )
    choices: (
        list[Annotated[list[TokenId], Field(min_length=1, max_length=MAX_CHOICE_TOKENS)]] | None
    ) = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHOICES,
        description="Candidate action token sequences to score after input_ids (log-prob sums).",
    )
    top_k: StrictInt = Field(
        default=8, ge=0, le=MAX_TOP_K, description="Next-token logits to return (0 = none)."
    )

    @field_validator("prefix_len")
    @classmethod
    def _prefix_within_input(cls, prefix_len: int, info: ValidationInfo) -> int:
        input_ids = info.data.get("input_ids")
        if input_ids is not None and prefix_len > len(input_ids):
            raise ValueError(f"prefix_len {prefix_len} > len(input_ids) {len(input_ids)}")
        return prefix_len

    @model_validator(mode="after")
    def _check_consistency(self) -> StepRequest:
        for c, choice in enumerate(self.choices or []):
            if len(self.input_ids) + len(choice) > MAX_INPUT_TOKENS:
                raise ValueError(
                    f"choices[{c}]: input_ids + choice exceed {MAX_INPUT_TOKENS} tokens"
                )
        return self


class Timing(_Strict):
    """Milliseconds spent per part of a step (wall clock, as measured where it ran)."""

    model_ms: float = 0.0
    state_ms: float = 0.0
    worker_ms: float = 0.0
    store_ms: float = 0.0
    total_ms: float = 0.0


class StepResponse(_Strict):
    """The answer to a ``StepRequest``.

    ``degraded`` means the step ran memoryless (present-only: an empty memory, and its frame
    was not remembered) because the store was unavailable. ``replayed`` means the step id had
    already been answered and this is the stored answer, not a new computation.
    """

    step_id: int
    session_id: str
    degraded: bool = False
    replayed: bool = False
    committed: bool = Field(
        default=False,
        description="True if the step was written to the store before this answer was sent "
        "(always under write-through, max_lag_steps=0); else it is committed within the lag.",
    )
    episode: int = 0
    frames_in_memory: int = Field(ge=0, description="Frames the memory held when this step ran.")
    top_k_ids: list[int] = Field(default_factory=list)
    top_k_logits: list[float] = Field(default_factory=list)
    choice_scores: list[float] | None = Field(
        default=None, description="Per choice: sum of log p(choice tokens | input_ids)."
    )
    timing: Timing = Field(default_factory=Timing)

    @model_validator(mode="after")
    def _finite(self) -> StepResponse:
        values = list(self.top_k_logits) + list(self.choice_scores or [])
        if any(not math.isfinite(v) for v in values):
            raise ValueError("logits and choice scores must be finite")
        return self


class ResetRequest(_Strict):
    """Start a new episode: the memory is emptied and step ids start over (from 0)."""

    reason: str | None = Field(default=None, max_length=256)


class ResetResponse(_Strict):
    session_id: str
    episode: int = Field(ge=0, description="Episodes begun so far (1 after the first reset).")
    degraded: bool = Field(description="True if the reset could not be written to the store.")


class ElapsedResponse(_Strict):
    """Host-side time since the session's last step and since its episode began (seconds)."""

    session_id: str
    since_last_step_s: float | None = Field(description="None before the first step.")
    since_reset_s: float
    last_step_id: int | None


class SessionSummary(_Strict):
    """What a session actor holds now (for operators and tests)."""

    session_id: str
    episode: int
    last_step_id: int | None = Field(description="Highest step id answered (committed or not).")
    committed_step_id: int | None = Field(description="Highest step id written to the store.")
    frames_in_memory: int
    degraded: bool
    pending_writes: int = Field(description="Steps answered but not yet written to the store.")
    restored: bool = Field(description="True if __init__ found this session in the store.")
    store: str = Field(description="The store's kind ('redis', 'rediss', 'local'), never its URL.")
