"""Configuration of episodic event memory (EM-LLM, mechanism 2 of DESIGN.md).

Tokens stream through a frozen LM in chunks of ``chunk_size``. Each chunk's queries attend to
``n_init`` sink tokens, the ``n_local`` most recent tokens and at most ``budget`` tokens of
retrieved events. Events are cut where the surprise exceeds ``mu + gamma * sigma`` of the last
``surprise_window`` surprises, then refined on the key-similarity graph.

Defaults suit SmolLM2-135M (2k-8k context): every query sees at most
``n_init + budget + n_local = 128 + 1024 + 512 = 1664`` positions, inside even a 2k training
context, so no position is out of distribution. A small model gains more from retrieved
memory than from a long local window, hence ``budget = 2 * n_local``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RefineMetric = Literal["modularity", "conductance", "none"]

MAX_TOKENS_BOUND = 1 << 20
MAX_EVENTS_BOUND = 1 << 16


def _tokens(default: int | None, description: str, ge: int = 1) -> Any:
    """A field counting tokens: an int in ``[ge, MAX_TOKENS_BOUND]``."""
    return Field(default=default, ge=ge, le=MAX_TOKENS_BOUND, description=description)


def _events(default: int, description: str, ge: int = 0) -> Any:
    """A field counting events: an int in ``[ge, MAX_EVENTS_BOUND]``."""
    return Field(default=default, ge=ge, le=MAX_EVENTS_BOUND, description=description)


class EpisodicConfig(BaseModel):
    """Sizes, thresholds and retrieval counts of episodic event memory.

    Frozen, unknown fields rejected, strict types (``True`` or ``"3"`` are not ints). Cross-field
    rules, each failing with a ValueError that names the fields:

    - ``budget >= n_local``: a retrieved-token budget smaller than the local window is rejected
      (the issue's "budget smaller than the window").
    - ``min_event_size <= max_event_size``, and ``min_event_size <= ceil(max_event_size / 2)``:
      a stretch longer than ``max_event_size`` is cut into equal pieces, which are only
      guaranteed to keep ``min_event_size`` under the second rule.
    - ``chunk_size <= n_local``: a chunk's tokens are not yet events while it is processed, so
      its first tokens must still be in the local window for its last queries.
    - ``max_event_size <= budget``: a larger event could never be retrieved.
    - ``k_contiguous > 0`` needs ``contiguity_queue >= 1``: neighbours come from that queue.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    n_init: int = _tokens(
        128,
        "Attention-sink tokens at the start of the stream, always attended.",
        ge=0,
    )
    n_local: int = _tokens(
        512,
        "Local window: the most recent tokens, always attended.",
    )
    budget: int = _tokens(
        1024,
        "Most tokens of retrieved events attended per chunk; must be >= n_local. Default "
        "1024 fits 16-32 typical events (32-64 tokens).",
    )
    chunk_size: int = _tokens(
        256,
        "Tokens prefilled per step, segmented into events together; <= n_local. 256 gives "
        "enough surprises per chunk for segmentation while keeping the chunk's own "
        "similarity matrix (chunk_size^2) small.",
    )
    gamma: float = Field(
        default=1.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Surprise threshold: boundary where s_t > mu + gamma * sigma (EM-LLM uses ~1).",
    )
    surprise_window: int = _tokens(
        128,
        "Number of previous surprises whose mean and population std set the threshold; at "
        "least 2 so that a spread exists.",
        ge=2,
    )
    min_event_size: int = _tokens(
        8,
        "Fewest tokens per event: shorter events carry too little to retrieve.",
    )
    max_event_size: int = _tokens(
        128,
        "Most tokens per event, so that one retrieval never swallows the budget; longer "
        "stretches without a surprise boundary are cut evenly.",
    )
    refine_metric: RefineMetric = Field(
        default="modularity",
        description=(
            "How boundaries are refined on the key-similarity graph: maximise modularity, "
            "minimise conductance, or 'none' (keep the surprise boundaries)."
        ),
    )
    refine_window: int | None = _tokens(
        None,
        "How far (tokens) a boundary may move; None: anywhere between its neighbours "
        "(EM-LLM's choice), always keeping min/max event sizes.",
        ge=0,
    )
    n_repr: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Representative keys per event and head, used to score it for retrieval.",
    )
    k_similar: int = _events(
        16,
        "k_s: events retrieved by query-to-representative similarity per chunk.",
    )
    k_contiguous: int = _events(
        8,
        "k_c: temporal neighbours of recently retrieved events added per chunk.",
    )
    contiguity_queue: int = _events(
        32,
        "Capacity of the queue of recently retrieved event ids whose neighbours are "
        "candidates for k_c (32: the similar events of the last two chunks).",
    )
    cache_events: int = _events(
        64,
        "Hot events kept on the model's device (LRU); 64 covers about 2-3 chunks' "
        "retrievals (k_s + k_c = 24 each).",
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> EpisodicConfig:
        if self.budget < self.n_local:
            raise ValueError(
                f"budget ({self.budget}) must be >= n_local ({self.n_local}): the retrieved-token "
                "budget may not be smaller than the local window"
            )
        if self.min_event_size > self.max_event_size:
            raise ValueError(
                f"min_event_size ({self.min_event_size}) must be <= max_event_size "
                f"({self.max_event_size})"
            )
        if self.min_event_size > (self.max_event_size + 1) // 2:
            raise ValueError(
                f"min_event_size ({self.min_event_size}) must be <= ceil(max_event_size / 2) "
                f"({(self.max_event_size + 1) // 2}): events longer than max_event_size are cut "
                "into equal pieces, which could otherwise be shorter than min_event_size"
            )
        if self.chunk_size > self.n_local:
            raise ValueError(
                f"chunk_size ({self.chunk_size}) must be <= n_local ({self.n_local}): a chunk "
                "must fit in the local window"
            )
        if self.max_event_size > self.budget:
            raise ValueError(
                f"max_event_size ({self.max_event_size}) must be <= budget ({self.budget}): a "
                "larger event could never be retrieved"
            )
        if self.k_contiguous > 0 and self.contiguity_queue < 1:
            raise ValueError(
                f"k_contiguous ({self.k_contiguous}) > 0 needs contiguity_queue >= 1 "
                f"(got {self.contiguity_queue}): neighbours are taken from that queue"
            )
        return self
