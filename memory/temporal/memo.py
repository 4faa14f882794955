"""A memo keyed by object identity, for the dicts a host passes again at every decision (chat
messages, tool specs): reading them once keeps a decision well under 100 µs.

An entry is reused while the object is the same one and its values (with `nested=True`,
also the values of its nested dicts) are the same objects; it keeps a reference to the object,
so its id cannot be reused meanwhile. Edits deeper than that must replace the dict (hosts append
new messages and rebuild specs, so this holds in practice). Bounded: cleared when full.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def _nested_snapshot(value: Mapping[str, Any]) -> tuple[Any, ...]:
    """Values, and the values of nested dicts (flat)."""
    parts: list[Any] = []
    for item in value.values():
        parts.append(item)
        if isinstance(item, dict):
            parts += item.values()
    return tuple(parts)


def _flat_snapshot(value: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(value.values())


class IdentityMemo(Generic[V]):
    """`memo.get(obj, compute)`: `compute(obj)` once per unchanged object."""

    def __init__(self, max_size: int = 16384, nested: bool = False) -> None:
        self.max_size = max_size
        self._snapshot = _nested_snapshot if nested else _flat_snapshot
        self._entries: dict[int, tuple[Mapping[str, Any], tuple[Any, ...], V]] = {}

    def get(self, obj: Mapping[str, Any], compute: Callable[[Mapping[str, Any]], V]) -> V:
        snapshot = self._snapshot(obj)
        hit = self._entries.get(id(obj))
        if (
            hit is not None
            and hit[0] is obj
            and len(hit[1]) == len(snapshot)
            and all(map(operator.is_, hit[1], snapshot))
        ):
            return hit[2]
        value = compute(obj)
        if len(self._entries) >= self.max_size:
            self._entries.clear()
        self._entries[id(obj)] = (obj, snapshot, value)
        return value
