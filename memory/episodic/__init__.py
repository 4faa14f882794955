"""Episodic event memory (EM-LLM), model-agnostic: segmentation by surprise, refinement on the
key-similarity graph, representative keys, two-stage retrieval and the event store.

Imports torch and numpy only (never kv_store: a backing store is any object with
``put_tensors``/``get_tensors``, see ``TensorBacking``).
"""

from memory.episodic.config import EpisodicConfig
from memory.episodic.event_store import EventStore, TensorBacking
from memory.episodic.events import Event, representative_indices, select_representatives
from memory.episodic.refinement import (
    key_similarity,
    partition_score,
    refine_boundaries,
    refine_boundaries_loop,
)
from memory.episodic.retrieval import (
    event_scores,
    pack_representatives,
    retrieve_events,
    retrieve_packed,
)
from memory.episodic.surprise import (
    split_long_events,
    surprise_boundaries,
    surprise_threshold,
    token_surprise,
)

__all__ = [
    "EpisodicConfig",
    "Event",
    "EventStore",
    "TensorBacking",
    "event_scores",
    "key_similarity",
    "pack_representatives",
    "partition_score",
    "refine_boundaries",
    "refine_boundaries_loop",
    "representative_indices",
    "retrieve_events",
    "retrieve_packed",
    "select_representatives",
    "split_long_events",
    "surprise_boundaries",
    "surprise_threshold",
    "token_surprise",
]
