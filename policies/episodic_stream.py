"""The attended part of an ``EpisodicLM`` stream: sinks and local window, per layer, pre-RoPE.

Stream tokens ``[0, n_sinks)`` are the sinks (the first ``n_init`` tokens, kept for good);
``[local_start, num_tokens)`` is the local window. Tokens in between have left the window
(into events, or dropped without memory). A layer may ``retain`` more than the local window: a
sliding-window layer keeps its last ``window - 1`` tokens, so its buffer starts at
``layer_start(layer) <= local_start``. K/V are (H, L, D): KV heads, tokens, head dim.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

KV = tuple[Tensor, Tensor]
"""Keys and values (H, L, D) of L stream tokens at one layer."""


class StreamWindow:
    """Per-layer K/V of the sinks and the local window, and the stream's token count.

    Only the count of stream tokens is kept, never their ids: nothing downstream reads them.
    """

    def __init__(self, n_init: int, retain: Mapping[int, int] | None = None) -> None:
        self.n_init = n_init
        # layer -> tokens before the next chunk the layer keeps even once they left the local
        # window (a sliding window's ``window - 1``); other layers keep the local window only.
        self.retain = dict(retain or {})
        self.num_tokens = 0
        # The local window starts after the sinks: every reader of local_start relies on it.
        self.local_start = 0
        self.sinks: dict[int, KV] = {}
        self.local: dict[int, KV] = {}
        self._layer_start: dict[int, int] = {}  # first stream index in a layer's local buffer

    @property
    def n_sinks(self) -> int:
        return min(self.num_tokens, self.n_init)

    @property
    def local_len(self) -> int:
        return self.num_tokens - self.local_start

    def layer_start(self, layer: int) -> int:
        """Stream index of the first token in ``layer``'s local buffer (``local_start`` unless
        the layer retains more)."""
        return self._layer_start.get(layer, self.local_start)

    def clear(self) -> None:
        self.num_tokens = 0
        self.local_start = 0
        self.sinks.clear()
        self.local.clear()
        self._layer_start.clear()

    def append(self, kv: Mapping[int, KV], count: int) -> None:
        """Append ``count`` new stream tokens, K/V (H, count, D) per layer: the first ones fill
        the sinks while there is room, the rest go to the local window."""
        to_sinks = max(0, min(count, self.n_init - self.n_sinks))
        for layer, (k, v) in kv.items():
            if to_sinks:  # once the sinks are full, do not copy them again every step
                self.sinks[layer] = _append(self.sinks.get(layer), k[:, :to_sinks], v[:, :to_sinks])
            self.local[layer] = _append(self.local.get(layer), k[:, to_sinks:], v[:, to_sinks:])
        self.num_tokens += count
        self.local_start = max(self.local_start, self.n_sinks)

    def oldest(self, count: int) -> dict[int, KV]:
        """K/V (H, count, D) per layer of the oldest ``count`` tokens of the local window,
        stream ``[local_start, local_start + count)`` (views)."""
        found = {}
        for layer, (k, v) in self.local.items():
            offset = self.local_start - self.layer_start(layer)
            found[layer] = (k[:, offset : offset + count], v[:, offset : offset + count])
        return found

    def evict(self, count: int) -> None:
        """Move the local window's start ``count`` tokens on; each layer's buffer drops what it
        no longer sees (a retaining layer keeps its last ``retain`` tokens)."""
        new_start = self.local_start + count
        for layer, (k, v) in self.local.items():
            first = self.layer_start(layer)
            keep_from = min(new_start, max(first, self.num_tokens - self.retain.get(layer, 0)))
            drop = keep_from - first
            self.local[layer] = (k[:, drop:], v[:, drop:])
            self._layer_start[layer] = keep_from
        self.local_start = new_start


def _append(current: KV | None, k: Tensor, v: Tensor) -> KV:
    """``current`` K/V (H, L, D) with ``k``/``v`` (H, T, D) appended along tokens."""
    if current is None:
        return k.clone(), v.clone()
    return torch.cat([current[0], k], dim=1), torch.cat([current[1], v], dim=1)
