"""Context assembly for ``EpisodicLM``: what one layer's queries attend, with packed positions.

Shapes: Hq = query heads, H = KV heads, D = head dim, T = tokens of the chunk in flight.

For each layer and chunk the assembled keys and values are::

    [sinks] [retrieved events, temporal order] [local window]

RoPE'd at positions ``0, 1, ..., S - 1`` in that order (InfLLM's scheme); the chunk's own
tokens are appended after them by the caller. The events are chosen per memory layer by
``retrieve_packed`` from the chunk's pre-RoPE queries and the events' representative keys
(k_s similar + k_c contiguous, at most ``budget`` tokens); layers without memory (sliding-window
layers) attend sinks and local window only. Each layer keeps its assembled context in a buffer
(:class:`RopedContext`): while its selection, sinks and local start stay the same (decoding
without eviction), the next chunk only appends its own tokens.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from memory.episodic import EpisodicConfig, EventStore, retrieve_packed
from policies.episodic_stream import StreamWindow
from policies.rope import apply_rope


class RopedContext:
    """One layer's assembled keys (RoPE'd at positions 0..n-1), values and the stream index
    of each key, in buffers (H, capacity, D) that later tokens are appended to in place."""

    def __init__(
        self,
        signature: tuple[Any, ...],
        event_ids: list[int],
        capacity: int,
        heads: int,
        dim: int,
        device: torch.device,
    ) -> None:
        self.signature = signature
        self.event_ids = event_ids
        self.keys = torch.empty(heads, capacity, dim, device=device)
        self.values = torch.empty(heads, capacity, dim, device=device)
        self.index = torch.empty(capacity, dtype=torch.long)
        self.length = 0

    @property
    def end(self) -> int:
        """Stream index after the last appended token (0 when empty)."""
        return int(self.index[self.length - 1]) + 1 if self.length else 0

    def append(self, keys: Tensor, values: Tensor, index: Tensor) -> None:
        """Append RoPE'd ``keys`` and ``values`` (H, n, D) of stream tokens ``index`` (n,)."""
        count = keys.shape[1]
        if self.length + count > self.keys.shape[1]:
            grow = self.length + count - self.keys.shape[1]
            self.keys = torch.cat([self.keys, torch.empty_like(self.keys[:, :grow])], dim=1)
            self.values = torch.cat([self.values, torch.empty_like(self.values[:, :grow])], dim=1)
            self.index = torch.cat([self.index, torch.empty_like(self.index[:grow])])
        stop = self.length + count
        self.keys[:, self.length : stop] = keys
        self.values[:, self.length : stop] = values
        self.index[self.length : stop] = index
        self.length = stop

    def view(self) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values (H, n, D) and stream indices (n,) of the tokens held."""
        n = self.length
        return self.keys[:, :n], self.values[:, :n], self.index[:n]


class RopeTables:
    """cos, sin (L, D) fp32 of positions ``0..L-1`` from the decoder's rotary embedding, per
    layer: one table per rotary kind (Gemma 3 has one for local and one for global layers,
    chosen by the ``layer_type`` argument of its rotary embedding), computed once for the
    longest context seen (angles depend on the position only for the supported rope types).
    """

    def __init__(
        self, rotary: nn.Module, layer_types: Sequence[str | None], min_length: int
    ) -> None:
        takes_type = "layer_type" in inspect.signature(rotary.forward).parameters
        self._rotary = rotary
        self._kinds = [kind if takes_type else None for kind in layer_types]
        self._min_length = min_length
        self._tables: dict[str | None, tuple[Tensor, Tensor]] = {}

    def __call__(self, layer: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        kind = self._kinds[layer]
        table = self._tables.get(kind)
        if table is None or table[0].shape[0] < length:
            size = max(length, self._min_length)
            dummy = torch.zeros(1, dtype=torch.float32, device=device)
            positions = torch.arange(size, device=device)[None]
            extra = () if kind is None else (kind,)
            cos, sin = self._rotary(dummy, positions, *extra)
            table = (cos[0].float(), sin[0].float())
            self._tables[kind] = table
        return table[0][:length], table[1][:length]


class ContextAssembler:
    """Builds (or reuses) each layer's ``[sinks][events][local]`` for the chunk in flight.

    ``memory_layers``: the layers that retrieve events; the others attend sinks and local window
    only. ``memory=False``: no layer retrieves (the sliding-window baseline).
    """

    def __init__(
        self,
        config: EpisodicConfig,
        store: EventStore,
        window: StreamWindow,
        rope: RopeTables,
        memory_layers: Sequence[int],
        num_kv_heads: int,
        head_dim: int,
    ) -> None:
        self.config = config
        self.store = store
        self.window = window
        self.rope = rope
        self.memory_layers = frozenset(memory_layers)
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self._contexts: dict[int, RopedContext] = {}
        self._selection: dict[int, list[int]] = {}
        # The chunk in flight (set by begin()): its first stream index, whether layers keep
        # their previous selection, and the events' sizes (read once per chunk).
        self._start = 0
        self._reuse = False
        self._sizes: dict[int, int] | None = None
        size = max(1, config.contiguity_queue)
        self._queues: dict[int, deque[int]] = {
            layer: deque(maxlen=size) for layer in self.memory_layers
        }

    def clear(self) -> None:
        """Forget every layer's context, selection and contiguity queue."""
        self._contexts.clear()
        self._selection.clear()
        for queue in self._queues.values():
            queue.clear()

    def begin(self, start: int, reuse: bool) -> None:
        """A new chunk starts at stream index ``start``; with ``reuse`` every layer keeps its
        previous selection of events instead of retrieving."""
        self._start = start
        self._reuse = reuse
        self._sizes = None

    def context(self, layer: int, query: Tensor) -> RopedContext:
        """The layer's assembled context for the chunk in flight (``query``: its pre-RoPE
        queries (Hq, T, D)): reused from the previous chunk when it holds the same events,
        sinks and local start and every token committed since (decoding), else rebuilt."""
        ids = self._retrieve(layer, query)
        start = self._start
        window = self.window
        local_start = window.layer_start(layer)
        signature = (tuple(ids), window.n_sinks, local_start)
        context = self._contexts.get(layer)
        if context is not None and context.signature == signature and context.end == start:
            return context
        events = [e for e in (self.store.get(i) for i in ids) if e is not None]
        device, dtype = query.device, torch.float32
        sinks, local = window.sinks.get(layer), window.local.get(layer)
        parts_k = [sinks[0]] if sinks is not None else []
        parts_v = [sinks[1]] if sinks is not None else []
        parts_k += [e.tensors[f"layer.{layer}.k"].to(device) for e in events]
        parts_v += [e.tensors[f"layer.{layer}.v"].to(device) for e in events]
        if local is not None:
            parts_k.append(local[0])
            parts_v.append(local[1])
        index = [*range(window.n_sinks)]
        index += [i for e in events for i in range(e.start, e.end)]
        index += range(local_start, start)
        empty = torch.zeros(self.num_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        keys = torch.cat([empty, *(p.to(dtype) for p in parts_k)], dim=1)
        values = torch.cat([empty, *(p.to(dtype) for p in parts_v)], dim=1)
        cos, sin = self.rope(layer, keys.shape[1], device)
        capacity = keys.shape[1] + self.config.n_local + 2 * self.config.chunk_size
        event_ids = [e.event_id for e in events]
        context = RopedContext(
            signature, event_ids, capacity, self.num_kv_heads, self.head_dim, device
        )
        context.append(apply_rope(keys, cos, sin), values, torch.tensor(index, dtype=torch.long))
        self._contexts[layer] = context
        return context

    def _retrieve(self, layer: int, query: Tensor) -> list[int]:
        """Ids (temporal order) of the events this layer's chunk attends, chosen by
        ``retrieve_packed`` from its pre-RoPE queries (Hq, T, D), or the previous selection on
        reuse steps."""
        if layer not in self.memory_layers or len(self.store) == 0:
            return []
        if self._reuse and layer in self._selection:
            return self._selection[layer]
        packed = self.store.packed_representatives(f"layer.{layer}")
        if packed is None:
            return []
        if self._sizes is None:
            self._sizes = self.store.sizes()
        config = self.config
        ids = retrieve_packed(
            query,
            *packed,
            self._sizes,
            config.k_similar,
            config.k_contiguous,
            config.budget,
            self._queues[layer],
        )
        self._selection[layer] = ids
        return ids
