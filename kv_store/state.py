"""Save and load a memory object's `state_dict()` through any store.

A state dict mixes tensors and plain JSON values (config, counters). The tensors travel as
tensors; everything else goes into the record's JSON metadata. No pickle anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from kv_store.base import Store

_PLAIN_KEY = "state"


def save_state(
    store: Store, key: str, state: Mapping[str, Any], ttl_s: float | None = None
) -> None:
    """Write `state` (values: tensors or plain JSON) under `key` as one record."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    store.put_tensors(key, tensors, meta={_PLAIN_KEY: plain}, ttl_s=ttl_s)


def load_state(store: Store, key: str) -> dict[str, Any] | None:
    """The state written by `save_state`, or None if there is none."""
    found = store.get_tensors(key)
    if found is None:
        return None
    tensors, meta = found
    plain = meta.get(_PLAIN_KEY)
    if not isinstance(plain, dict):
        raise ValueError(f"record {key!r} was not written by save_state (no '{_PLAIN_KEY}' meta)")
    overlap = set(plain) & set(tensors)
    if overlap:
        raise ValueError(f"record {key!r} names {sorted(overlap)} both as tensors and as values")
    return {**plain, **tensors}
