"""Event formation for ``EpisodicLM``: stream tokens leaving the local window become events.

The tokens are segmented by surprise (``surprise_boundaries``), the boundaries refined on the
key-similarity graph of their pre-RoPE keys at ``similarity_layers`` (``key_similarity`` +
``refine_boundaries``), and each event is stored in the ``EventStore`` with its pre-RoPE K/V
(H, n, D) and representative keys at every memory layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from memory.episodic import (
    EpisodicConfig,
    Event,
    EventStore,
    key_similarity,
    refine_boundaries,
    select_representatives,
    surprise_boundaries,
)
from policies.episodic_stream import KV


class EventFormer:
    """Cuts evicted stream tokens into events and stores them; keeps the boundary traces.

    ``memory_layers``: the layers whose K/V an event keeps (the layers that retrieve).
    ``boundaries_before`` / ``boundaries_after``: stream indices of event starts before / after
    refinement, for plotting.
    """

    def __init__(
        self,
        config: EpisodicConfig,
        store: EventStore,
        similarity_layers: Sequence[int],
        memory_layers: Sequence[int],
    ) -> None:
        self.config = config
        self.store = store
        self.similarity_layers = list(similarity_layers)
        self.memory_layers = list(memory_layers)
        self.boundaries_before: list[int] = []
        self.boundaries_after: list[int] = []
        self.next_event_id = 0

    def clear(self) -> None:
        """Forget the traces and restart event ids (the store is cleared by its owner)."""
        self.boundaries_before = []
        self.boundaries_after = []
        self.next_event_id = 0

    def form(self, start: int, kv: Mapping[int, KV], surprise: Sequence[float]) -> None:
        """Segment stream tokens ``[start, start + n)`` into events and store them.

        ``kv``: layer -> K/V (H, n, D) of those tokens, pre-RoPE; ``surprise``: the surprise of
        every stream token so far (the tokens before ``start`` are the threshold's context).
        """
        config = self.config
        count = next(iter(kv.values()))[0].shape[1]
        own = torch.tensor(surprise[start : start + count], dtype=torch.float64)
        context = torch.tensor(
            surprise[max(0, start - config.surprise_window) : start], dtype=torch.float64
        )
        bounds = surprise_boundaries(
            own,
            config.gamma,
            config.surprise_window,
            min_size=config.min_event_size,
            max_size=config.max_event_size,
            context=context if context.numel() else None,
        )
        refined = self._refine(kv, bounds)
        self.boundaries_before.extend(start + b for b in bounds)
        self.boundaries_after.extend(start + b for b in refined)
        for a, b in itertools.pairwise([0, *refined, count]):
            self.store.add(self._event(start, a, b, kv))
            self.next_event_id += 1

    def _refine(self, kv: Mapping[int, KV], bounds: list[int]) -> list[int]:
        """Boundaries moved to the best split of the mean key-similarity graph."""
        config = self.config
        if config.refine_metric == "none" or not bounds:
            return bounds
        graph = torch.stack([key_similarity(kv[layer][0]) for layer in self.similarity_layers])
        return refine_boundaries(
            graph.mean(0),
            bounds,
            metric=config.refine_metric,
            min_size=config.min_event_size,
            window=config.refine_window,
            max_size=config.max_event_size,
        )

    def _event(self, start: int, a: int, b: int, kv: Mapping[int, KV]) -> Event:
        """The event of tokens ``[a, b)`` of the evicted span (stream ``start + a ...``)."""
        tensors: dict[str, Tensor] = {}
        representatives: dict[str, Tensor] = {}
        for layer in self.memory_layers:
            k, v = kv[layer]
            keys = k[:, a:b]
            tensors[f"layer.{layer}.k"] = keys
            tensors[f"layer.{layer}.v"] = v[:, a:b]
            representatives[f"layer.{layer}"] = select_representatives(
                keys, n_repr=self.config.n_repr
            )
        return Event(self.next_event_id, start + a, start + b, tensors, representatives)
