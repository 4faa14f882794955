"""`LocalStore`: the in-process default. Thread-safe, optionally byte-bounded with LRU eviction."""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kv_store.base import BaseStore, Record
from kv_store.codec import tensors_nbytes
from kv_store.errors import RecordTooLarge


@dataclass
class _Entry:
    tensors: dict[str, torch.Tensor]  # the store's own copies
    meta_json: str  # the meta as JSON text: every read parses a fresh copy
    nbytes: int
    expires_at: float | None


@dataclass
class _Stream:
    events: deque[tuple[str, int, str]]  # (id, ms, json payload)
    last_ms: int = -1
    last_seq: int = -1


@dataclass
class _Index:
    """Members with scores, and the same pairs kept sorted ascending for range reads."""

    scores: dict[str, float] = field(default_factory=dict)
    ordered: list[tuple[float, str]] = field(default_factory=list)

    def add(self, member: str, score: float) -> None:
        self.remove(member)
        self.scores[member] = score
        bisect.insort(self.ordered, (score, member))

    def remove(self, member: str, score: float | None = None) -> None:
        old = self.scores.get(member)
        if old is None or (score is not None and old != score):
            return
        del self.scores[member]
        del self.ordered[bisect.bisect_left(self.ordered, (old, member))]


@dataclass
class _Backing:
    """The data every namespace view of one LocalStore shares."""

    max_bytes: int | None
    lock: threading.RLock = field(default_factory=threading.RLock)
    entries: OrderedDict[tuple[str, str], _Entry] = field(default_factory=OrderedDict)
    streams: dict[tuple[str, str], _Stream] = field(default_factory=dict)
    indexes: dict[tuple[str, str], _Index] = field(default_factory=dict)
    nbytes: int = 0


class LocalStore(BaseStore):
    """In-process store. Tensors are copied in and out, so neither side can alias the other.

    Args:
        max_bytes: bound on the tensor bytes held across all namespaces; least recently used
            records are evicted to make room (None: unbounded). A single record larger than the
            bound is refused with `RecordTooLarge`.
        ttl_clock: monotonic seconds used for TTL expiry (injectable for tests).
        namespace, max_record_bytes, max_event_bytes, max_events_per_stream, event_clock:
            see `BaseStore`.
    """

    def __init__(
        self,
        namespace: str = "default",
        *,
        max_bytes: int | None = None,
        ttl_clock: Callable[[], float] = time.monotonic,
        _backing: _Backing | None = None,
        **options: Any,
    ) -> None:
        super().__init__(namespace, **options)
        if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes <= 0):
            raise ValueError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
        self._backing = _backing or _Backing(max_bytes=max_bytes)
        self._options = options
        self.ttl_clock = ttl_clock

    def with_namespace(self, namespace: str) -> LocalStore:
        return LocalStore(
            namespace, ttl_clock=self.ttl_clock, _backing=self._backing, **self._options
        )

    @property
    def nbytes(self) -> int:
        """Tensor bytes held now, across all namespaces of this store."""
        with self._backing.lock:
            return self._backing.nbytes

    # -- tensors -------------------------------------------------------------------------------
    def _raw_put_many(self, records: dict[str, Record], ttl_s: float | None) -> None:
        backing = self._backing
        now = self.ttl_clock()
        expires_at = None if ttl_s is None else now + ttl_s
        copies = {
            k: ({n: t.clone() for n, t in tensors.items()}, json.dumps(meta) if meta else "")
            for k, (tensors, meta) in records.items()
        }
        with backing.lock:
            for key, (tensors, meta_json) in copies.items():
                nbytes = tensors_nbytes(tensors)
                if backing.max_bytes is not None and nbytes > backing.max_bytes:
                    raise RecordTooLarge(
                        f"record {key!r} of {nbytes} bytes exceeds LocalStore max_bytes="
                        f"{backing.max_bytes}"
                    )
                self._pop((self.namespace, key))
                backing.entries[(self.namespace, key)] = _Entry(
                    tensors, meta_json, nbytes, expires_at
                )
                backing.nbytes += nbytes
                self._evict_to_fit()

    def _raw_get_many(self, keys: list[str]) -> list[Record | None]:
        found: list[Record | None] = []
        with self._backing.lock:
            for key in keys:
                entry = self._live_entry((self.namespace, key))
                if entry is None:
                    found.append(None)
                    continue
                self._backing.entries.move_to_end((self.namespace, key))
                found.append(
                    (
                        {n: t.clone() for n, t in entry.tensors.items()},
                        json.loads(entry.meta_json) if entry.meta_json else {},
                    )
                )
        return found

    def _raw_delete(self, key: str) -> bool:
        with self._backing.lock:
            existed = self._live_entry((self.namespace, key)) is not None
            self._pop((self.namespace, key))
            return existed

    def _raw_exists(self, key: str) -> bool:
        with self._backing.lock:
            return self._live_entry((self.namespace, key)) is not None

    def _raw_keys(self, prefix: str) -> list[str]:
        with self._backing.lock:
            candidates = [k for ns, k in self._backing.entries if ns == self.namespace]
            return [
                k
                for k in candidates
                if k.startswith(prefix) and self._live_entry((self.namespace, k))
            ]

    def _raw_touch(self, key: str, ttl_s: float) -> bool:
        with self._backing.lock:
            entry = self._live_entry((self.namespace, key))
            if entry is None or entry.expires_at is None:
                return False
            entry.expires_at = self.ttl_clock() + ttl_s
            return True

    # -- indexes -------------------------------------------------------------------------------
    def _raw_index_add(self, indexes: list[str], member: str, score: float) -> None:
        with self._backing.lock:
            for index in indexes:
                self._backing.indexes.setdefault((self.namespace, index), _Index()).add(
                    member, score
                )

    def _raw_index_remove(self, indexes: list[str], member: str, score: float | None) -> None:
        with self._backing.lock:
            for index in indexes:
                found = self._backing.indexes.get((self.namespace, index))
                if found is not None:
                    found.remove(member, score)
                    if not found.scores:
                        del self._backing.indexes[(self.namespace, index)]

    def _raw_index_range(
        self, index: str, offset: int, limit: int | None
    ) -> list[tuple[str, float]]:
        with self._backing.lock:
            found = self._backing.indexes.get((self.namespace, index))
            if found is None:
                return []
            end = len(found.ordered) - offset
            start = 0 if limit is None else max(0, end - limit)
            return [
                (member, score) for score, member in reversed(found.ordered[start : max(end, 0)])
            ]

    # -- events --------------------------------------------------------------------------------
    def _raw_append_event(self, stream: str, ms: int, payload: str) -> str:
        with self._backing.lock:
            log = self._backing.streams.setdefault(
                (self.namespace, stream), _Stream(deque(maxlen=self.max_events_per_stream))
            )
            if ms < log.last_ms:
                raise ValueError(
                    f"event time goes backwards in stream {stream!r}: "
                    f"{ms} ms < last {log.last_ms} ms"
                )
            seq = log.last_seq + 1 if ms == log.last_ms else 0
            log.last_ms, log.last_seq = ms, seq
            event_id = f"{ms}-{seq}"
            log.events.append((event_id, ms, payload))
            return event_id

    def _raw_read_events(
        self, stream: str, lo_ms: int | None, hi_ms: int | None
    ) -> list[tuple[str, str | bytes]]:
        with self._backing.lock:
            log = self._backing.streams.get((self.namespace, stream))
            if log is None:
                return []
            return [
                (event_id, payload)
                for event_id, ms, payload in log.events
                if (lo_ms is None or ms >= lo_ms) and (hi_ms is None or ms <= hi_ms)
            ]

    def _raw_delete_stream(self, stream: str) -> bool:
        with self._backing.lock:
            return self._backing.streams.pop((self.namespace, stream), None) is not None

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release; the data stays for other views of this store."""

    # -- internals (call with the lock held) ---------------------------------------------------
    def _live_entry(self, full_key: tuple[str, str]) -> _Entry | None:
        entry = self._backing.entries.get(full_key)
        if (
            entry is not None
            and entry.expires_at is not None
            and self.ttl_clock() >= entry.expires_at
        ):
            self._pop(full_key)
            return None
        return entry

    def _pop(self, full_key: tuple[str, str]) -> None:
        entry = self._backing.entries.pop(full_key, None)
        if entry is not None:
            self._backing.nbytes -= entry.nbytes

    def _evict_to_fit(self) -> None:
        backing = self._backing
        while backing.max_bytes is not None and backing.nbytes > backing.max_bytes:
            oldest = next(iter(backing.entries))
            self._pop(oldest)
