"""Save and load a memory object's `state_dict()` through any store, or as one record.

A state dict mixes tensors and plain JSON values (config, counters). The tensors travel as
tensors; everything else goes into the record's JSON metadata. No pickle anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from kv_store.base import Store
from kv_store.codec import decode_record, encode_record

_PLAIN_KEY = "state"


def split_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``state`` as (its tensors, its plain values)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return tensors, plain


def join_state(
    tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Inverse of ``split_state``; a name on both sides means the record is not a state."""
    overlap = set(plain) & set(tensors)
    if overlap:
        raise ValueError(f"{where} names {sorted(overlap)} both as tensors and as values")
    return {**plain, **tensors}


def save_state(
    store: Store, key: str, state: Mapping[str, Any], ttl_s: float | None = None
) -> None:
    """Write `state` (values: tensors or plain JSON) under `key` as one record."""
    tensors, plain = split_state(state)
    store.put_tensors(key, tensors, meta={_PLAIN_KEY: plain}, ttl_s=ttl_s)


def load_state(store: Store, key: str) -> dict[str, Any] | None:
    """The state written by `save_state`, or None if there is none."""
    found = store.get_tensors(key)
    if found is None:
        return None
    return _state_from(*found, where=f"record {key!r}", writer="save_state")


def encode_state(state: Mapping[str, Any]) -> bytes:
    """`state` as one codec record (bytes), e.g. to cross a process boundary."""
    tensors, plain = split_state(state)
    return encode_record(tensors, {_PLAIN_KEY: plain})


def decode_state(data: bytes) -> dict[str, Any]:
    """Inverse of ``encode_state``; raises ``CorruptRecord`` on foreign bytes."""
    return _state_from(*decode_record(data), where="state record", writer="encode_state")


def _state_from(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str, writer: str
) -> dict[str, Any]:
    plain = meta.get(_PLAIN_KEY)
    if not isinstance(plain, dict):
        raise ValueError(f"{where} was not written by {writer} (no '{_PLAIN_KEY}' meta)")
    return join_state(tensors, plain, where)
