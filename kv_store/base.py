"""The `Store` protocol and what every backend shares: validation, naming, event ids.

Backends (`LocalStore`, `RedisStore`) implement a handful of `_raw_*` methods; the public
methods here validate input once, in one place, so both behave the same on bad input.

Three kinds of data live in a store, each keyed by a string inside the store's namespace:
records (tensors + JSON meta, optionally with a TTL), event streams (time-ordered JSON events)
and ordered indexes (string members with a float score, read highest score first; what a
caller builds to find records without listing every key).

A key's *family* (`key_family`) is its first `FAMILY_SEGMENTS` '/'-separated segments, e.g.
`session/robot/r1` for `session/robot/r1` and `session/robot/r1/events`: the keys of one
session. A sharded backend (Redis Cluster) keeps a family on one shard, so operations on one
family's keys stay atomic there.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeGuard, runtime_checkable

import torch

from kv_store.codec import (
    DEFAULT_MAX_RECORD_BYTES,
    check_meta,
    check_size,
    check_tensors,
    tensors_nbytes,
)
from kv_store.errors import CorruptRecord, RecordTooLarge

TensorDict = dict[str, torch.Tensor]
Record = tuple[TensorDict, dict[str, Any]]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_MAX_EVENTS_PER_STREAM = 10_000
MAX_KEY_CHARS = 4096
#: Keys longer than this (in UTF-8 bytes) are stored under a blake2b digest of themselves.
HASH_KEYS_LONGER_THAN = 200
#: How many leading '/'-separated segments of a key name its family (see the module docstring).
FAMILY_SEGMENTS = 3
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/@=+,\-]+$")


@runtime_checkable
class Store(Protocol):
    """Where tensor state and event logs live. See DESIGN.md, 'Public entry points'."""

    namespace: str

    def put_tensors(
        self,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
    ) -> None: ...

    def get_tensors(self, key: str) -> Record | None: ...

    def put_many(
        self,
        items: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, Any] | None]],
        ttl_s: float | None = None,
    ) -> None: ...

    def get_many(self, keys: Sequence[str]) -> list[Record | None]: ...

    def delete(self, key: str) -> bool: ...

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str = "") -> list[str]: ...

    def touch(self, key: str, ttl_s: float) -> bool: ...

    def index_add(self, indexes: Sequence[str], member: str, score: float) -> None: ...

    def index_remove(
        self, indexes: Sequence[str], member: str, score: float | None = None
    ) -> None: ...

    def index_range(
        self, index: str, offset: int = 0, limit: int | None = None
    ) -> list[tuple[str, float]]: ...

    def append_event(self, stream: str, record: Mapping[str, Any]) -> str: ...

    def read_events(
        self,
        stream: str,
        start: float | None = None,
        end: float | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]: ...

    def delete_stream(self, stream: str) -> bool: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class BaseStore(ABC):
    """Validation and event semantics shared by every backend.

    Events: each record is a JSON object with a time `t` (seconds since the epoch; taken from
    `event_clock` when absent). Event ids are `"<ms>-<seq>"` as in Redis Streams, so times must
    not go backwards within a stream (a clear `ValueError` otherwise) and a time-range read is a
    range of ids. Each returned event carries its id under `"_id"`.
    """

    def __init__(
        self,
        namespace: str = "default",
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_events_per_stream: int = DEFAULT_MAX_EVENTS_PER_STREAM,
        event_clock: Callable[[], float] = time.time,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self.max_record_bytes = _positive_int("max_record_bytes", max_record_bytes)
        self.max_event_bytes = _positive_int("max_event_bytes", max_event_bytes)
        self.max_events_per_stream = _positive_int("max_events_per_stream", max_events_per_stream)
        self.event_clock = event_clock

    # -- tensors -------------------------------------------------------------------------------
    def put_tensors(
        self,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """Store `tensors` (+ JSON `meta`) under `key`, replacing what was there, atomically."""
        self.put_many({key: (tensors, meta)}, ttl_s=ttl_s)

    def get_tensors(self, key: str) -> Record | None:
        """`(tensors, meta)` stored under `key`, or None if absent or expired."""
        return self.get_many([key])[0]

    def put_many(
        self,
        items: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, Any] | None]],
        ttl_s: float | None = None,
    ) -> None:
        """Store several records; each is validated (and size-checked) before any is written."""
        ttl = check_ttl(ttl_s)
        checked: dict[str, Record] = {}
        for key, item in items.items():
            check_key(key)
            if not isinstance(item, tuple) or len(item) != 2:
                raise ValueError(f"put_many: items[{key!r}] must be a (tensors, meta) tuple")
            tensors = check_tensors(item[0])
            meta = check_meta(item[1])
            check_size(tensors_nbytes(tensors), self.max_record_bytes, what=f"record {key!r}")
            checked[key] = (tensors, meta)
        if checked:
            self._raw_put_many(checked, ttl)

    def get_many(self, keys: Sequence[str]) -> list[Record | None]:
        for key in keys:
            check_key(key)
        return self._raw_get_many(list(keys)) if keys else []

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed."""
        return self._raw_delete(check_key(key))

    def exists(self, key: str) -> bool:
        return self._raw_exists(check_key(key))

    def keys(self, prefix: str = "") -> list[str]:
        """Keys of this namespace starting with `prefix`, sorted."""
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {type(prefix)}")
        return sorted(self._raw_keys(prefix))

    def touch(self, key: str, ttl_s: float) -> bool:
        """Restart the TTL of `key` at `ttl_s` seconds, without rewriting the record; only a
        record that has a TTL is touched (one written without stays without). True if it was.

        The record is not read or written, so a touch never undoes a concurrent put or delete:
        a deleted record stays deleted, a record rewritten since it was read keeps its new value.
        """
        ttl = check_ttl(ttl_s)
        if ttl is None:
            raise ValueError("ttl_s must be a positive number of seconds")
        return self._raw_touch(check_key(key), ttl)

    # -- indexes -------------------------------------------------------------------------------
    def index_add(self, indexes: Sequence[str], member: str, score: float) -> None:
        """Put `member` into each of `indexes` with `score` (replacing its score there)."""
        self._raw_index_add(
            _check_indexes(indexes), check_key(member, what="member"), _check_score(score)
        )

    def index_remove(self, indexes: Sequence[str], member: str, score: float | None = None) -> None:
        """Take `member` out of each of `indexes`; with `score`, only where its score is still
        exactly `score` (so a clean-up of a stale entry never removes a newer add)."""
        self._raw_index_remove(
            _check_indexes(indexes),
            check_key(member, what="member"),
            None if score is None else _check_score(score),
        )

    def index_range(
        self, index: str, offset: int = 0, limit: int | None = None
    ) -> list[tuple[str, float]]:
        """`(member, score)` pairs of `index`, highest score first (ties: member descending),
        skipping `offset`, at most `limit` (None: all)."""
        check_key(index, what="index")
        for name, value in (("offset", offset), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if limit == 0:
            return []
        return self._raw_index_range(index, int(offset), None if limit is None else int(limit))

    # -- events --------------------------------------------------------------------------------
    def append_event(self, stream: str, record: Mapping[str, Any]) -> str:
        """Append a JSON record to `stream`; returns its id. Oldest events beyond
        `max_events_per_stream` are trimmed."""
        check_key(stream, what="stream")
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be a dict of plain JSON values, got {type(record)}")
        event = check_meta(record)
        if "_id" in event:
            raise ValueError("record may not contain the reserved field '_id'")
        t = event.get("t")
        t = float(self.event_clock()) if t is None else t
        if not _is_finite_number(t) or t < 0:
            raise ValueError(f"record['t'] must be a finite number of seconds >= 0, got {t!r}")
        event["t"] = float(t)
        payload = json.dumps(event, separators=(",", ":"), allow_nan=False)
        if len(payload) > self.max_event_bytes:
            raise RecordTooLarge(
                f"event of {len(payload)} bytes exceeds max_event_bytes={self.max_event_bytes}"
            )
        return self._raw_append_event(stream, event_ms(event["t"]), payload)

    def read_events(
        self,
        stream: str,
        start: float | None = None,
        end: float | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events of `stream` with `start <= t <= end` (seconds, inclusive), oldest first."""
        check_key(stream, what="stream")
        for name, value in (("start", start), ("end", end)):
            if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds or None")
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        if start is not None and end is not None and end < start:
            return []
        lo = None if start is None else event_ms(max(start, 0.0))
        hi = None if end is None else event_ms(max(end, 0.0))
        events = []
        for event_id, payload in self._raw_read_events(stream, lo, hi):
            event = decode_event(event_id, payload)
            if (start is None or event["t"] >= start) and (end is None or event["t"] <= end):
                events.append(event)
                if limit is not None and len(events) >= limit:
                    break
        return events

    def delete_stream(self, stream: str) -> bool:
        return self._raw_delete_stream(check_key(stream, what="stream"))

    # -- backend hooks -------------------------------------------------------------------------
    @abstractmethod
    def _raw_put_many(self, records: dict[str, Record], ttl_s: float | None) -> None: ...

    @abstractmethod
    def _raw_get_many(self, keys: list[str]) -> list[Record | None]: ...

    @abstractmethod
    def _raw_delete(self, key: str) -> bool: ...

    @abstractmethod
    def _raw_exists(self, key: str) -> bool: ...

    @abstractmethod
    def _raw_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _raw_touch(self, key: str, ttl_s: float) -> bool: ...

    @abstractmethod
    def _raw_index_add(self, indexes: list[str], member: str, score: float) -> None: ...

    @abstractmethod
    def _raw_index_remove(self, indexes: list[str], member: str, score: float | None) -> None: ...

    @abstractmethod
    def _raw_index_range(
        self, index: str, offset: int, limit: int | None
    ) -> list[tuple[str, float]]: ...

    @abstractmethod
    def _raw_append_event(self, stream: str, ms: int, payload: str) -> str: ...

    @abstractmethod
    def _raw_read_events(
        self, stream: str, lo_ms: int | None, hi_ms: int | None
    ) -> list[tuple[str, str | bytes]]: ...

    @abstractmethod
    def _raw_delete_stream(self, stream: str) -> bool: ...

    @abstractmethod
    def ping(self) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def with_namespace(self, namespace: str) -> BaseStore:
        """Another view of the same backend, confined to `namespace`."""


def check_name(value: str, pattern: re.Pattern[str], rule: str) -> str:
    """``value`` if it is a string that ``pattern`` matches, else ValueError("<rule>; got ...")."""
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{rule}; got {value!r}")
    return value


def check_namespace(namespace: str) -> str:
    return check_name(
        namespace,
        _NAMESPACE_RE,
        "namespace must be 1-64 characters of letters, digits, '_', '.', '-'",
    )


def check_key(key: str, what: str = "key") -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"{what} is {len(key)} characters long; the limit is {MAX_KEY_CHARS}")
    return key


def check_ttl(ttl_s: float | None) -> float | None:
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds or None, got {ttl_s!r}")
    return float(ttl_s)


def key_family(key: str) -> str:
    """The family of a key: its first `FAMILY_SEGMENTS` '/'-separated segments (the whole key
    when it has fewer)."""
    return "/".join(key.split("/", FAMILY_SEGMENTS)[:FAMILY_SEGMENTS])


def storage_name(key: str) -> str:
    """The name a key is stored under: itself when short and plain, else `#<blake2b hex>`."""
    if len(key.encode()) <= HASH_KEYS_LONGER_THAN and _SAFE_KEY_RE.match(key):
        return key
    return "#" + hashlib.blake2b(key.encode(), digest_size=20).hexdigest()


def event_ms(t: float) -> int:
    return math.floor(t * 1000.0)


def decode_event(event_id: str, payload: str | bytes) -> dict[str, Any]:
    try:
        event = json.loads(payload)
        if not isinstance(event, dict) or not isinstance(event.get("t"), int | float):
            raise ValueError("not an event object with a time 't'")
    except ValueError as err:
        raise CorruptRecord(f"event {event_id} is not valid: {err}") from err
    event["_id"] = event_id
    return event


def _check_indexes(indexes: Sequence[str]) -> list[str]:
    if isinstance(indexes, str) or not isinstance(indexes, Sequence):
        raise ValueError(f"indexes must be a list of index names, got {indexes!r}")
    return [check_key(index, what="index") for index in indexes]


def _is_finite_number(value: object) -> TypeGuard[int | float]:
    """An int or float (never a bool: ``True`` is no time or score) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_score(score: float) -> float:
    if not _is_finite_number(score):
        raise ValueError(f"score must be a finite number, got {score!r}")
    return float(score)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
